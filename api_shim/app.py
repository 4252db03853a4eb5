"""The thin submit API: validates, records the task in PostgreSQL, enqueues its first wake-up, never runs agents.

``create_app()`` builds the FastAPI application; ``autogpt-workers api`` serves it with uvicorn, through
``create_server_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from api_shim import metrics as api_metrics
from api_shim.gateway import install as install_gateway
from api_shim.lifecycle_routes import router as lifecycle_router
from api_shim.shed_connections import ShedConnections
from autogpt_workers import connection_share, tracing, tracing_celery
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import app as celery_app
from autogpt_workers.config import Settings, get_settings
from autogpt_workers.gc_tuning import tune as tune_gc
from autogpt_workers.store import phase_sql, submit_sql
from autogpt_workers.store.db import Database
from autogpt_workers.submit import BackgroundPublisher, IdempotencyConflict, submit_group

PING_AFTER_IDLE_S = 1.0  # a pooled connection unused this long is pinged before use (``store.db.ping_after_idle``)


def create_server_app() -> FastAPI:
    """The factory uvicorn calls in each API process: ``create_app``, then the process's garbage collector tuned
    (``gc_tuning``: what imports and the app made is frozen). Not for an app built inside another program."""
    settings = get_settings()
    app = create_app(settings)
    tune_gc(settings.gc_young_threshold)
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.db = Database.from_url(
            settings.database_url,
            settings.api_db_pool_size,
            settings.api_db_max_overflow,
            ping_after_idle_s=PING_AFTER_IDLE_S,  # a busy API's connections are not pinged at each request
        )
        if settings.db_prepared_statements:
            phase_sql.prepare_submit_on_connect(app.state.db, submit_sql.SUBMIT_STATEMENTS)
        app.state.publisher = Publisher(celery_app)
        # new tasks' first wake-ups are published off the request (the answer waits for the commit only)
        app.state.background_publisher = BackgroundPublisher(
            app.state.db, app.state.publisher, threads=settings.api_publish_threads, batch=settings.api_publish_batch
        )
        app.state.submit_group = (
            submit_group(
                app.state.db, settings.api_group_commit_max_batch, on_batch=api_metrics.SUBMIT_BATCH.observe
            )
            if settings.api_group_commit
            else None
        )
        yield
        app.state.background_publisher.close()
        app.state.db.dispose()

    app = FastAPI(
        title="autogpt-workers",
        version="0.1.0",
        description="Submit autonomous agent tasks; they run as durable background jobs.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry: off, ours is ``tracing`` (the instrumentation's spans, Prometheus' metrics);
        # on, it looked the global providers up in the environment at every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if tracing.setup(settings, "autogpt-api"):  # an OTLP endpoint is configured
        tracing.instrument_fastapi(app)
        tracing_celery.install_publisher()
    install_gateway(app, settings)
    app.include_router(lifecycle_router)
    api_metrics.install(app)
    if connection_share.CURRENT is not None:  # one of several API processes: keep its share of connections even
        app.add_middleware(ShedConnections, share=connection_share.CURRENT)

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": "the task store is unavailable; retry shortly"},
            headers={"Retry-After": "2"},
        )

    return app
