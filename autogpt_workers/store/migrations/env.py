"""Alembic environment: the URL comes from the caller (``autogpt-workers migrate``) or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from autogpt_workers.store.schema import metadata

config = context.config
if not config.get_main_option("sqlalchemy.url"):
    from autogpt_workers.config import get_settings

    config.set_main_option("sqlalchemy.url", get_settings().database_url)

target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                     poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # one migrator at a time, even when several containers start together
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
