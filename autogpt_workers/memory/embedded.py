"""The embedded default store: SQLite with the ``sqlite-vec`` extension, one file per host, no server.

Why this one, measured on this project's 2-core machine by ``python -m bench.memory_candidates`` (384-dim vectors,
top-5, one tenant holding all N beside a tenant of 1,000; sqlite-vec 0.1.9 with apsw, LanceDB 0.40, qdrant-client
1.20 local mode; figures in the README's Memory section):

- sqlite-vec: two writer processes on one fresh file both fine (WAL + busy wait); top-5 at 100k p50 77 ms, p99
  102 ms; the small tenant beside them 0.7 ms (partition key); 9,000-15,000 inserts/s in batches of 1,000;
- LanceDB: two writers fine when the table is created with ``exist_ok`` (an earlier session, without it, saw one
  fail on the creation race); p50 107 ms, p99 176 ms at 100k; the small tenant 53 ms (a filtered scan); about
  30,000 inserts/s;
- qdrant-client local mode: a second process is refused ("already accessed by another instance"); 128 ms p50
  at 10k already; about 770 inserts/s (it warns past 20k points, so 100k was not measured).

SQLite in WAL mode lets every worker process on the host read while one writes, and a busy timeout queues
writers, so the think pool's threads and the act pool's processes share one file safely; qdrant-client's local
mode refuses a second process outright (and warns past 20k points), and LanceDB turns every small write into a
new table version and makes a small tenant pay for the whole table. ``vec0`` partitions vectors by tenant (a search
scans only that tenant's rows: isolation is structural, and small tenants stay fast whatever the file holds) and
filters on task, kind and importance inside the KNN scan. The scan is exact (no ANN index): a single tenant past
~100k memories is where Weaviate's HNSW is the better home.

Python's own ``sqlite3`` here cannot load extensions, so the connection is ``apsw``'s.

Layout: ``memories`` (the records, one row each) and ``memory_vectors`` (``vec0``, same rowid), changed together
in one transaction; ``memory_meta`` records the embedding model and dimensions the file was built with, so a
worker configured with another model refuses to start instead of comparing incomparable vectors.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from autogpt_workers.green import native_local, offloaded
from autogpt_workers.memory.base import MemoryFilter, MemoryHit, NewMemory, VectorStore
from autogpt_workers.memory.errors import MemoryConfigError, MemoryRequestError, MemoryUnavailable

BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    task_id TEXT,
    step_index INTEGER,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    importance REAL NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS ix_memories_tenant_task ON memories (tenant_id, task_id);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_vectors USING vec0(
    tenant_id text partition key,
    embedding float[{dims}] distance_metric=cosine,
    task_id text,
    kind text,
    importance float
);
"""

_COLUMNS = "m.id, m.tenant_id, m.task_id, m.step_index, m.kind, m.text, m.importance, m.metadata, m.created_at"


def _blob(vector: Sequence[float]) -> bytes:
    return struct.pack(f"{len(vector)}f", *vector)


class SqliteVecStore(VectorStore):
    """Memories in one SQLite file at ``path``; ``model`` names the embedding model the vectors come from."""

    def __init__(self, path: Path | str, dims: int, model: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        try:
            import apsw  # noqa: F401
            import sqlite_vec  # noqa: F401
        except ImportError as exc:  # pragma: no cover - both are core dependencies
            raise MemoryConfigError(f"the embedded memory store needs apsw and sqlite-vec: {exc}") from exc
        self.path = Path(path)
        self.dims = dims
        self.model = model
        self.busy_timeout_ms = busy_timeout_ms
        # per OS thread even under gevent: the methods run ``offloaded`` on gevent's thread pool there
        self._local = native_local()

    # -- connections (one per thread and process: a forked child opens its own) -------------------------------

    def _connection(self) -> Any:
        import apsw
        import sqlite_vec

        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _mapped():
            conn = apsw.Connection(str(self.path))
            conn.enable_load_extension(True)
            conn.load_extension(sqlite_vec.loadable_path())
            conn.enable_load_extension(False)
            conn.set_busy_timeout(self.busy_timeout_ms)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction taken up front (``BEGIN IMMEDIATE``): writers queue on the busy timeout instead of
        failing on a lock upgrade."""
        conn = self._connection()
        with _mapped():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- VectorStore -------------------------------------------------------------------------------------------

    @offloaded
    def ensure_schema(self) -> None:
        with self._write() as conn:
            conn.execute(_SCHEMA.format(dims=int(self.dims)))
            found = dict(conn.execute("SELECT key, value FROM memory_meta").fetchall())
            if not found:
                conn.executemany(
                    "INSERT INTO memory_meta (key, value) VALUES (?, ?)",
                    [("dims", str(self.dims)), ("model", self.model)],
                )
                return
        if found.get("dims") != str(self.dims) or found.get("model") != self.model:
            raise MemoryConfigError(
                f"the memory store {self.path} holds {found.get('dims')}-dim vectors of model {found.get('model')!r}; "
                f"this worker embeds with {self.model!r} ({self.dims} dims). Vectors of different models cannot be "
                "compared: point AUTOGPT_MEMORY_PATH at another file or configure the same model."
            )

    @offloaded
    def upsert(self, memories: Sequence[NewMemory], vectors: Sequence[Sequence[float]]) -> list[str]:
        self._check_vectors(memories, vectors)
        if not memories:
            return []
        with self._write() as conn:
            self._delete_existing(conn, memories)
            for memory, vector in zip(memories, vectors, strict=True):
                conn.execute(
                    "INSERT INTO memories (id, tenant_id, task_id, step_index, kind, text, importance, metadata, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        memory.id,
                        memory.tenant_id,
                        memory.task_id,
                        memory.step_index,
                        memory.kind,
                        memory.text,
                        memory.importance,
                        json.dumps(memory.metadata),
                        memory.created_at.isoformat(),
                    ),
                )
                rowid = conn.last_insert_rowid()
                conn.execute(
                    "INSERT INTO memory_vectors (rowid, tenant_id, embedding, task_id, kind, importance) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (rowid, memory.tenant_id, _blob(vector), memory.task_id or "", memory.kind, memory.importance),
                )
        return [m.id for m in memories]

    @offloaded
    def search(
        self, tenant_id: str, vector: Sequence[float], k: int, where: MemoryFilter | None = None
    ) -> list[MemoryHit]:
        if len(vector) != self.dims:
            raise ValueError(f"the query vector has {len(vector)} dimensions; this store holds {self.dims}")
        if k < 1:
            return []
        clauses = ["embedding MATCH :vector", "k = :k", "tenant_id = :tenant"]
        params: dict[str, Any] = {"vector": _blob(vector), "k": int(k), "tenant": tenant_id}
        if where is not None:
            if where.task_id is not None:
                clauses.append("task_id = :task")
                params["task"] = where.task_id
            if where.kind is not None:
                clauses.append("kind = :kind")
                params["kind"] = where.kind
            if where.min_importance is not None:
                clauses.append("importance >= :importance")
                params["importance"] = where.min_importance
        sql = (
            f"WITH knn AS (SELECT rowid, distance FROM memory_vectors WHERE {' AND '.join(clauses)}) "
            f"SELECT {_COLUMNS}, knn.distance FROM knn JOIN memories m ON m.rowid = knn.rowid "
            "WHERE m.tenant_id = :tenant ORDER BY knn.distance"
        )
        conn = self._connection()
        with _mapped():
            rows = conn.execute(sql, params).fetchall()
        return [_hit(row) for row in rows]

    @offloaded
    def delete_task(self, tenant_id: str, task_id: str) -> int:
        with self._write() as conn:
            return self._delete_rows(
                conn, "SELECT rowid, tenant_id FROM memories WHERE tenant_id = ? AND task_id = ?", (tenant_id, task_id)
            )

    @offloaded
    def delete_tenant(self, tenant_id: str) -> int:
        with self._write() as conn:
            return self._delete_rows(conn, "SELECT rowid, tenant_id FROM memories WHERE tenant_id = ?", (tenant_id,))

    @offloaded
    def count(self, tenant_id: str) -> int:
        conn = self._connection()
        with _mapped():
            return int(conn.execute("SELECT count(*) FROM memories WHERE tenant_id = ?", (tenant_id,)).fetchall()[0][0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = native_local()

    @classmethod
    def _delete_existing(cls, conn: Any, memories: Sequence[NewMemory]) -> None:
        """Delete the stored versions of ``memories`` (same tenant and id), a few hundred ids per query."""
        by_tenant: dict[str, list[str]] = {}
        for memory in memories:
            by_tenant.setdefault(memory.tenant_id, []).append(memory.id)
        for tenant, ids in by_tenant.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                select = f"SELECT rowid, tenant_id FROM memories WHERE tenant_id = ? AND id IN ({marks})"
                cls._delete_rows(conn, select, (tenant, *chunk))

    @staticmethod
    def _delete_rows(conn: Any, select: str, params: tuple[Any, ...]) -> int:
        rows = conn.execute(select, params).fetchall()
        for rowid, tenant in rows:
            # a vec0 delete by rowid must name the partition to find the row quickly
            conn.execute("DELETE FROM memory_vectors WHERE rowid = ? AND tenant_id = ?", (rowid, tenant))
            conn.execute("DELETE FROM memories WHERE rowid = ?", (rowid,))
        return len(rows)


def _hit(row: Sequence[Any]) -> MemoryHit:
    id_, tenant, task, step, kind, text, importance, metadata, created_at, distance = row
    return MemoryHit(
        id=id_,
        tenant_id=tenant,
        task_id=task,
        step_index=step,
        kind=kind,
        text=text,
        importance=importance,
        metadata=json.loads(metadata),
        created_at=datetime.fromisoformat(created_at),
        score=1.0 - float(distance),
    )


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Translate apsw's exceptions: a busy or full database is transient, anything else is a rejected request."""
    import apsw

    try:
        yield
    except (apsw.BusyError, apsw.LockedError, apsw.FullError, apsw.IOError, apsw.CantOpenError) as exc:
        raise MemoryUnavailable(f"embedded memory store unavailable: {type(exc).__name__}: {exc}") from exc
    except apsw.Error as exc:
        raise MemoryRequestError(f"embedded memory store rejected the request: {type(exc).__name__}: {exc}") from exc
