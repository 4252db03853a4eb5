"""Tenants and their API keys: create, list, revoke, authenticate.

A key is ``agw_`` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored: with that much entropy
a fast hash is as safe as a slow KDF and costs one index lookup per request. Each key belongs to one tenant; every
read and write of the API is scoped to the tenant of the key that made it.

A tenant also has a webhook signing secret (HMAC-SHA256, see ``webhooks``) and optional limits; a limit left
unset falls back to the settings (``api_rate_per_s``, ``api_rate_burst``, ``tenant_max_running``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autogpt_workers.errors import UsageError
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import ApiKey, Tenant

KEY_PREFIX = "agw_"
DEFAULT_TENANT = "default"
ANONYMOUS = "\x00anonymous"  # the cache's entry for development mode without a key (no digest looks like it)
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyNotFound(UsageError):
    """No key matches the id or prefix given."""


class InvalidTenant(UsageError):
    """A tenant id that is not 1-64 letters, digits, '.', '_' or '-'."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """A tenant's own limits; ``None`` means the settings' default applies."""

    rate_per_s: float | None = None
    rate_burst: int | None = None
    max_running: int | None = None


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, the key used (None in development mode without a key) and its limits."""

    tenant_id: str
    key_id: uuid.UUID | None
    limits: Limits


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_tenant_id(tenant_id: str) -> str:
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidTenant(f"tenant id {tenant_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return tenant_id


def ensure_tenant(s: Session, tenant_id: str, limits: Limits | None = None) -> Tenant:
    """The tenant's row, created with a fresh webhook secret if missing; ``limits`` given overwrite the stored."""
    check_tenant_id(tenant_id)
    s.execute(
        insert(Tenant)
        .values(id=tenant_id, webhook_secret="whsec_" + secrets.token_urlsafe(32))
        .on_conflict_do_nothing(index_elements=[Tenant.id])
    )
    if limits is not None:
        changes = {k: v for k, v in dataclasses.asdict(limits).items() if v is not None}
        if changes:
            s.execute(update(Tenant).where(Tenant.id == tenant_id).values(**changes))
    return s.get_one(Tenant, tenant_id, populate_existing=True)


def _info(k: ApiKey) -> KeyInfo:
    return KeyInfo(k.id, k.tenant_id, k.name, k.prefix, k.created_at, k.revoked_at)


def create_key(db: Database, tenant_id: str, name: str = "", limits: Limits | None = None) -> tuple[str, KeyInfo, str]:
    """A new key for ``tenant_id`` (the tenant is created if new). Returns (the key, its record, the tenant's
    webhook secret). The key itself is shown this once and never stored."""
    raw = new_key()
    with db.transaction() as s:
        tenant = ensure_tenant(s, tenant_id, limits)
        key = ApiKey(tenant_id=tenant_id, name=name[:128], prefix=raw[:12], key_hash=hash_key(raw))
        s.add(key)
        s.flush()
        s.refresh(key)
        return raw, _info(key), tenant.webhook_secret


def list_keys(db: Database, tenant_id: str | None = None) -> list[KeyInfo]:
    with db.session() as s:
        stmt = select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.created_at)
        if tenant_id is not None:
            stmt = stmt.where(ApiKey.tenant_id == tenant_id)
        return [_info(k) for k in s.scalars(stmt)]


def revoke_key(db: Database, ref: str) -> KeyInfo:
    """Revoke the key whose id or prefix (as ``keys list`` shows it) is ``ref``. Revoking twice is harmless."""
    with db.transaction() as s:
        try:
            matches = list(s.scalars(select(ApiKey).where(ApiKey.id == uuid.UUID(ref))))
        except ValueError:
            if len(ref) < 8:
                raise KeyNotFound(f"{ref!r} is too short: give the id or 8+ characters of the prefix") from None
            matches = list(s.scalars(select(ApiKey).where(ApiKey.prefix.startswith(ref, autoescape=True))))
        if not matches:
            raise KeyNotFound(f"no API key has the id or prefix {ref!r}")
        if len(matches) > 1:
            raise KeyNotFound(f"{len(matches)} keys start with {ref!r}; give the key id")
        key = matches[0]
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
        return _info(key)


def tenant_limits(s: Session, tenant_id: str) -> Limits:
    tenant = s.get(Tenant, tenant_id)
    if tenant is None:
        return Limits()
    return Limits(tenant.rate_per_s, tenant.rate_burst, tenant.max_running)


class Authenticator:
    """Turns a presented key into a ``Principal``, remembering answers for ``ttl_s`` seconds.

    The cache keeps a busy API from asking PostgreSQL on every request; a revoked key stops working within
    ``ttl_s``. Unknown keys are remembered too, so a flood of bad keys costs no queries either.
    """

    def __init__(self, db: Database, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def cached(self, raw: str | None) -> tuple[bool, Principal | None]:
        """The remembered answer for a key (``None``: the anonymous principal) without asking PostgreSQL:
        (True, principal or None for an unknown key) if it is fresh, (False, None) if ``authenticate`` (or
        ``anonymous``) must look it up. Cheap enough for the event loop."""
        hit = self._cache.get(ANONYMOUS if raw is None else hash_key(raw))  # a dict read is atomic
        if hit is not None and hit[0] > time.monotonic() and (raw is not None or hit[1] is not None):
            return True, hit[1]
        return False, None

    def authenticate(self, raw: str) -> Principal | None:
        digest = hash_key(raw)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = self._lookup(digest)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl_s, principal)
        return principal

    def anonymous(self) -> Principal:
        """Development mode without a key: the ``default`` tenant."""
        key = ANONYMOUS
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now and hit[1] is not None:
            return hit[1]
        with self.db.session() as s:
            principal = Principal(DEFAULT_TENANT, None, tenant_limits(s, DEFAULT_TENANT))
        with self._lock:
            self._cache[key] = (now + self.ttl_s, principal)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        with self.db.session() as s:
            row = s.execute(
                select(ApiKey.id, ApiKey.tenant_id, Tenant.rate_per_s, Tenant.rate_burst, Tenant.max_running)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
        if row is None:
            return None
        key_id, tenant_id, rate, burst, max_running = row
        return Principal(tenant_id, key_id, Limits(rate, burst, max_running))
