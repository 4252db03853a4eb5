"""Every table of the platform, for Alembic's autogenerate and for tests: import a module here when you add one."""

from autogpt_workers.store import gateway, models  # noqa: F401
from autogpt_workers.store.models import Base

metadata = Base.metadata
