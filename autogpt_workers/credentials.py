"""Production checks of the credentials in the settings: the broker URL, the database URL and Flower's login.

Each URL is parsed the way its client parses it (kombu for the broker, SQLAlchemy for the database), so what is
checked is what would be used to connect. Each function returns a list of problems in words (empty: fine).
"""

from __future__ import annotations

from kombu.utils.url import parse_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# placeholders from our own examples (.env.example, docker-compose.yml, deploy/k8s) and the usual defaults
PLACEHOLDER_PASSWORDS = frozenset({"admin", "guest", "password", "change-me", "changeme", "secret"})


def broker_url_problems(url: str) -> list[str]:
    """RabbitMQ URL(s) (``;``-separated failover list): each names a user other than ``guest`` and a password.

    Without a user, Celery (kombu) connects as ``guest:guest``."""
    problems = []
    for one in (u.strip() for u in url.split(";") if u.strip()):
        try:
            parts = parse_url(one)
        except Exception as exc:  # kombu raises plain ValueError/KeyError on garbage
            problems.append(f"AUTOGPT_BROKER_URL cannot be parsed ({exc})")
            continue
        where = f"AUTOGPT_BROKER_URL (host {parts.get('hostname') or '?'})"
        user, password = parts.get("userid"), parts.get("password")
        if not user:
            problems.append(f"production refuses {where} without a user: the client would fall back to RabbitMQ's "
                            "guest account")
        elif user == "guest":
            problems.append(f"production refuses the RabbitMQ guest account in {where}")
        elif not password:
            problems.append(f"production refuses {where} without a password")
    return problems


def database_url_problems(url: str) -> list[str]:
    """A PostgreSQL URL for a host other than this one carries a password (a unix socket or localhost may rely on
    peer authentication)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        return [f"AUTOGPT_DATABASE_URL cannot be parsed ({exc})"]
    host = parsed.host or str(parsed.query.get("host") or "")
    local = not host or host.startswith("/") or host in LOCAL_HOSTS
    if not parsed.password and not local:
        return [f"production refuses a PostgreSQL URL without a password (AUTOGPT_DATABASE_URL, host {host}); "
                "put the password in the URL"]
    return []


def flower_auth_problems(value: str) -> list[str]:
    """Flower's basic auth, ``user:password`` (several comma-separated): a user and a real password each."""
    problems = []
    pairs = [p.strip() for p in value.split(",") if p.strip()] or [""]
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            problems.append("production refuses AUTOGPT_FLOWER_BASIC_AUTH without a user and a password "
                            "(user:password)")
        elif pair == "admin:admin" or password.lower() in PLACEHOLDER_PASSWORDS:
            problems.append(f"production refuses the default Flower credentials for user {user!r} "
                            "(AUTOGPT_FLOWER_BASIC_AUTH)")
    return problems
