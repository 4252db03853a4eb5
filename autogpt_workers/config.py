"""One validated settings object, read at the edge (env vars and ``.env``) and passed inward.

Every variable is ``AUTOGPT_<NAME>`` except the LLM's, which use the names the openai client reads
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``) so an existing environment just works.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autogpt_workers.credentials import broker_url_problems, database_url_problems, flower_auth_problems
from autogpt_workers.errors import ConfigError

# RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout (30 min by default).
RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_S = 1800.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOGPT_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"

    # services
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/autogpt"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # a worker's step connections, all kept: a connection past ``db_pool_size`` (an overflow one) is opened for
    # one transaction and closed after it, and under load that churn (a new PostgreSQL backend per transaction,
    # its fork and catalog warm-up) cost more CPU than the steps' own SQL: 88 -> 95 steps/s at K = 200 going from
    # 10 + 20 overflow to 20 + 0 (20 + 10 still churned). A step thread waits for a free connection instead; the
    # transactions are a few milliseconds long
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    # the workers' step statements and the API's submit as server-side prepared statements (planned once per
    # connection). Turn it off behind a PgBouncer in transaction pooling mode, which does not keep a session's
    # prepared statements
    db_prepared_statements: bool = True
    # the API's (per uvicorn process): its submit route runs at most ``api_db_pool_size`` database calls at once,
    # so the overflow serves only the other routes
    api_db_pool_size: int = Field(default=10, ge=1)
    api_db_max_overflow: int = Field(default=20, ge=0)
    # the API's submits that arrive together are written in one statement (``submit.submit_group``); false: each alone
    api_group_commit: bool = True
    # at most this many submits in one statement of the group commit
    api_group_commit_max_batch: int = Field(default=32, ge=1)
    # the API's background publisher: > 1, each of its threads publishes up to this many new tasks' wake-ups on a
    # connection of its own and then waits once for the broker's confirms (``confirm_batch``); 1: one at a time
    api_publish_batch: int = Field(default=16, ge=1)
    # the API's background publisher's threads: two publishing in batches kept up with the most submits and the
    # lowest tail (``make bench``'s submit figure, the twenty-fourth session's notes in docs/benchmark-history.md)
    api_publish_threads: int = Field(default=2, ge=1, le=64)
    # POST /v1/tasks with an ordinary body is answered by the API's gate, past FastAPI's routing (``api_shim.
    # fast_submit``); false: every request through FastAPI's route
    api_fast_submit: bool = True

    # LLM (any OpenAI-compatible endpoint)
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "AUTOGPT_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "AUTOGPT_OPENAI_BASE_URL")
    )
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_max_attempts: int = Field(default=5, ge=1, le=20)
    llm_backoff_max_s: float = Field(default=20.0, gt=0)
    # a Retry-After longer than llm_backoff_max_s hands the step back to run after it, waiting at most this long
    # (and under redrive_after_s, so the reaper does not re-drive the delayed wake-up early)
    llm_retry_after_max_s: float = Field(default=300.0, gt=0)
    llm_max_connections: int = Field(default=500, ge=1)
    # the think worker's LLM connections are split over this many clients, each thread keeping to one: the HTTP
    # pool's bookkeeping walks all of a client's connections on every request (with one client of 250 connections
    # that walk was 7% of the think worker's CPU at 500 agents in flight; with eight, 1.3%)
    llm_client_shards: int = Field(default=8, ge=1, le=64)
    # what carries the openai client's requests: "lean", our HTTP/1.1 transport with a C reply parser
    # (llm/lean_transport; 0.63 of the CPU per call of httpx's own in ``python -m bench.llm_micro --transports``), or
    # "httpx", httpx's own (HTTP/2 not used either way). A proxy named in the environment always goes through httpx's.
    llm_http_transport: Literal["lean", "httpx"] = "lean"
    # USD per 1k tokens: {"model": [prompt, completion]}; unknown models cost the default pair
    llm_prices_per_1k: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": (0.00015, 0.0006),
            "gpt-4o": (0.0025, 0.01),
            "scripted-demo": (0.001, 0.002),
        }
    )
    llm_default_price_per_1k: tuple[float, float] = (0.001, 0.002)

    # durable steps
    lease_ttl_s: float = Field(default=30.0, gt=0)
    lease_heartbeat_s: float = Field(default=10.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    reaper_interval_s: float = Field(default=5.0, gt=0)
    outbox_grace_s: float = Field(default=10.0, ge=0)
    # a published wake-up of a closed step (or of a finished task) is kept this long, then the reaper deletes it (a
    # prune a minute, or one per retention period if shorter): the outbox holds the wake-ups in flight, not one row
    # per step ever run. 0 keeps them all
    outbox_retention_s: float = Field(default=3600.0, ge=0)
    # a finished task (completed, failed, cancelled) is kept this many days after it finished, then the reaper deletes
    # it with its steps, events, webhook deliveries and stored files (once a minute, in batches). 0 keeps every task
    task_retention_days: float = Field(default=0.0, ge=0)
    think_time_limit_s: float = Field(default=600.0, gt=0)
    act_time_limit_s: float = Field(default=300.0, gt=0)
    rabbitmq_consumer_timeout_s: float = Field(default=RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_S, gt=0)
    # greenlets (or threads) per think worker: each holds one agent waiting on the LLM (under 0.2 MB each, see
    # make bench)
    think_concurrency: int = Field(default=500, ge=1)
    # the think worker's pool: "gevent" (a greenlet per agent in flight, the standard library patched at start,
    # ``autogpt_workers.green``) or "threads" (an OS thread per agent). Read before the worker imports anything:
    # set it in the environment or ``.env``, or pass ``worker --queue think --pool threads``
    think_pool: Literal["threads", "gevent"] = "gevent"
    act_concurrency: int = Field(default=2, ge=1)
    # Celery task events (sent, received, started, succeeded: about 7 broker messages per step on top of the 2
    # wake-ups): the feed Flower shows. Off, Flower still turns the workers' own events on when it starts.
    task_events: bool = True
    # the think worker runs quick in-process commands (file commands, finish; ``Command.runs_inline``) itself right
    # after persisting the proposal: one broker hop and one transaction fewer per step. Off: every command goes
    # through the act queue.
    inline_act: bool = True
    # an inline command running longer than this is handed to the act queue (whose prefork workers can kill it)
    inline_act_time_limit_s: float = Field(default=30.0, gt=0)
    # the workers' and the API's garbage collector (``gc_tuning``): start-up's objects frozen, and the youngest
    # generation collected once this many more container objects are alive than after the last collection; 0 keeps
    # Python's own collector (threshold 700, nothing frozen)
    gc_young_threshold: int = Field(default=100_000, ge=0)
    # lifecycle: on SIGTERM a worker finishes its in-flight step within this grace, else hands it back
    # (keep it below the orchestrator's kill timeout, e.g. Kubernetes' terminationGracePeriodSeconds, 30 s)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    # the reaper re-publishes a wake-up published this long ago whose step was never claimed (message lost)
    redrive_after_s: float = Field(default=600.0, gt=0)
    # chaos suite only (see autogpt_workers/crashpoints.py): "<window>:<probability>[:<match>[:<action>]]"
    chaos_crash_at: str | None = None
    chaos_journal: Path | None = None
    # chaos suite only: a rule fires only once the worker has run this long (its last crash's redeliveries get
    # through before the next one; see crashpoints)
    chaos_min_uptime_s: float = Field(default=0.0, ge=0)

    # tasks
    default_max_steps: int = Field(default=20, ge=1)
    max_goal_chars: int = Field(default=20_000, ge=1)
    workspace_root: Path = Path("var/workspaces")
    max_file_bytes: int = Field(default=1_000_000, ge=1)
    max_observation_chars: int = Field(default=8_000, ge=100)

    # commands: the code sandbox (see commands/sandbox.py), web_fetch, profiles, artifacts
    # "auto": execute_python/execute_shell are offered; an act worker whose host cannot sandbox says so at start and
    # refuses each run. "required": such an act worker refuses to start. "off" (set it on every worker): the model is
    # never offered them (a platform without the sandbox's privileges, e.g. act pods that drop all capabilities)
    sandbox: Literal["auto", "required", "off"] = "auto"
    sandbox_cpu_seconds: int = Field(default=10, ge=1)
    sandbox_wall_seconds: float = Field(default=30.0, gt=0)
    sandbox_memory_mb: int = Field(default=512, ge=32)  # address space per process
    sandbox_file_size_mb: int = Field(default=16, ge=1)
    sandbox_max_processes: int = Field(default=32, ge=1)
    sandbox_tmp_mb: int = Field(default=64, ge=1)
    sandbox_uid_base: int = Field(default=200_000, ge=1000)  # each concurrent run on a host gets its own uid
    sandbox_uid_count: int = Field(default=1024, ge=1)
    sandbox_runtime_dir: Path | None = None  # uid locks and mount points; default <tmp>/autogpt-sandbox
    sandbox_python: str = "python3"  # looked up on the sandbox's PATH (the host's /usr)
    sandbox_shell_programs: list[str] | None = None  # execute_shell's allow-list; None: the built-in list
    web_allowed_domains: list[str] = Field(default_factory=list)  # empty: web_fetch refuses every URL
    web_max_bytes: int = Field(default=1_000_000, ge=1)
    web_timeout_s: float = Field(default=10.0, gt=0)
    profiles_dir: Path | None = None  # extra/overriding agent profiles (<name>.yaml)
    approval_timeout_s: float | None = Field(default=86_400.0, gt=0)  # a waiting approval/question expires; None: never
    artifact_store: Literal["local", "s3"] = "local"
    artifact_scratch_dir: Path = Path("var/scratch")  # where an s3-backed act worker materialises workspaces
    artifact_s3_bucket: str | None = None
    artifact_s3_prefix: str = "tasks/"
    artifact_s3_endpoint_url: str | None = None  # MinIO, Ceph, moto...; None: AWS
    artifact_s3_region: str | None = None
    artifact_s3_access_key_id: str | None = None  # None: boto3's own chain (AWS_* variables, instance role)
    artifact_s3_secret_access_key: SecretStr | None = None

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_url: str = "http://127.0.0.1:8000"
    # "disabled" (or `api --insecure-dev`) lets requests without a key in as tenant "default": development only
    api_auth: Literal["required", "disabled"] = "required"
    api_rate_per_s: float = Field(default=20.0, gt=0)  # per-tenant token bucket (tenants may override)
    api_rate_burst: int = Field(default=100, ge=1)
    # > 0 (e.g. 0.05): a tenant allowed >= 4 / this requests/s has up to this many seconds of its rate taken per
    # Redis call and spent by the API process without a call (``ratelimit``: at most 5% of the burst, 64 requests)
    api_rate_lease_s: float = Field(default=0.0, ge=0)
    api_max_page_size: int = Field(default=100, ge=1)
    api_max_input_bytes: int = Field(default=16_384, ge=64)  # additional_input / metadata, as JSON
    api_max_upload_bytes: int = Field(default=10_000_000, ge=1)
    api_max_body_bytes: int = Field(default=1_000_000, ge=1_024)  # any JSON request body
    ap_step_wait_s: float = Field(default=30.0, ge=0)  # POST .../steps waits this long for the step to finish
    sse_poll_s: float = Field(default=0.5, gt=0)
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    sse_max_stream_s: float = Field(default=300.0, gt=0)  # then the stream ends; clients resume with Last-Event-ID
    # scheduling: running-task caps (None = no cap) and deadline urgency
    tenant_max_running: int | None = Field(default=None, ge=1)  # default cap per tenant (tenants may override)
    scheduler_max_running: int | None = Field(default=None, ge=1)  # all tenants together
    # the backlog gate (autogpt_workers/backlog.py): while this many think wake-ups wait in RabbitMQ (every worker
    # busy), new tasks wait in the admission queue (fair share, urgency); needs a dispatcher. 0: never
    scheduler_max_ready: int = Field(default=8, ge=0)
    deadline_horizon_s: float = Field(default=3600.0, gt=0)  # priority starts rising this long before a deadline
    deadline_max_boost: int = Field(default=4, ge=0, le=9)
    # webhooks (the dispatcher process)
    dispatcher_interval_s: float = Field(default=0.5, gt=0)
    # an idle dispatcher loop looks in the database at least this often (autogpt_workers/wake.py)
    dispatcher_idle_look_s: float = Field(default=5.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1)
    webhook_backoff_base_s: float = Field(default=1.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1)

    # Flower
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_basic_auth: SecretStr = SecretStr("admin:admin")

    # Prometheus /metrics (a worker group, the reaper, the autoscaler); 0 = this process serves none
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # multiprocess mode: each process group writes under metrics_dir/<role>-<pid> (wiped at start)
    metrics_dir: Path = Path("var/metrics")
    # RabbitMQ management API (queue depth, unacked, oldest message); default: the broker's host on :15672
    # with the broker's credentials and vhost
    rabbitmq_management_url: str | None = None
    # a running task with no live lease and no event for this long counts as stuck (when stuck.py is absent)
    stuck_after_s: float = Field(default=900.0, gt=0)

    # memory (see autogpt_workers/memory): long-term store, embeddings, short-term TTL, the prompt's token window
    memory_backend: Literal["embedded", "weaviate", "none"] = "embedded"
    memory_path: Path = Path("var/memory/memory.sqlite3")  # the embedded store: one file shared by the host
    memory_embedder: Literal["local", "openai"] = "local"  # local: all-MiniLM-L6-v2 (the local-embeddings extra)
    memory_embedding_model: str = "text-embedding-3-small"  # for memory_embedder=openai
    memory_embedding_dims: int | None = Field(default=None, ge=1)  # openai: checked at start; None: the model's
    memory_embeddings_base_url: str | None = None  # openai: default OPENAI_BASE_URL
    memory_embeddings_api_key: SecretStr | None = None  # openai: default OPENAI_API_KEY
    memory_embedding_batch_size: int = Field(default=64, ge=1, le=2048)
    memory_embedding_cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)  # Redis cache; 0 = no cache
    memory_local_threads: int | None = Field(default=1, ge=1)  # torch threads per worker process
    memory_top_k: int = Field(default=5, ge=0, le=50)  # memories in every step's prompt; 0 = none
    memory_min_score: float = Field(default=0.25, ge=-1, le=1)
    memory_importance_threshold: float = Field(default=0.5, ge=0, le=1)
    memory_shortterm_ttl_s: int = Field(default=3600, ge=1)
    memory_shortterm_items: int = Field(default=20, ge=1)
    weaviate_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTOGPT_WEAVIATE_URL", "WEAVIATE_URL")
    )
    weaviate_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AUTOGPT_WEAVIATE_API_KEY", "WEAVIATE_API_KEY")
    )
    weaviate_grpc_port: int = Field(default=50051, ge=1, le=65535)
    weaviate_collection: str = Field(default="AgentMemory", pattern=r"^[A-Z][A-Za-z0-9_]*$")
    weaviate_batch_size: int = Field(default=100, ge=1, le=10_000)
    llm_context_tokens: int | None = Field(default=128_000, ge=2_000)  # the model's window; None = never trim
    llm_completion_reserve_tokens: int = Field(default=4_096, ge=0)

    log_json: bool = True
    log_level: str = "INFO"

    # tracing (autogpt_workers/tracing.py), by the standard OpenTelemetry variables: no endpoint, no tracing at all.
    # The SDK reads the rest itself (OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, ...).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otel_traces_exporter: str = Field(default="otlp", validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"))
    otel_sdk_disabled: bool = Field(default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    otel_service_name: str | None = Field(default=None, validation_alias=AliasChoices("OTEL_SERVICE_NAME"))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        problems: list[str] = []
        if self.lease_heartbeat_s * 2 > self.lease_ttl_s:
            problems.append("lease_heartbeat_s must be at most half of lease_ttl_s (a lease survives one missed beat)")
        limit = self.rabbitmq_consumer_timeout_s
        if self.act_time_limit_s + 30 >= limit:
            problems.append(f"act_time_limit_s must stay well below RabbitMQ's consumer_timeout ({limit:.0f}s)")
        if self.think_time_limit_s + 30 >= limit:
            problems.append(f"think_time_limit_s must stay well below RabbitMQ's consumer_timeout ({limit:.0f}s)")
        if self.llm_retry_after_max_s + 30 >= limit:
            problems.append(f"llm_retry_after_max_s must stay well below RabbitMQ's consumer_timeout ({limit:.0f}s): "
                            "a delayed wake-up is held unacked by a worker until it is due")
        if self.sandbox_wall_seconds + 10 >= self.act_time_limit_s:
            problems.append("sandbox_wall_seconds must stay well below act_time_limit_s (the run is killed first)")
        if self.artifact_store == "s3" and not self.artifact_s3_bucket:
            problems.append("artifact_store=s3 needs AUTOGPT_ARTIFACT_S3_BUCKET")
        worst_llm = self.llm_max_attempts * (self.llm_timeout_s + self.llm_backoff_max_s)
        if worst_llm >= self.think_time_limit_s:
            problems.append(
                f"llm_max_attempts x (llm_timeout_s + llm_backoff_max_s) = {worst_llm:.0f}s must be below "
                f"think_time_limit_s ({self.think_time_limit_s:.0f}s)"
            )
        if self.memory_backend == "weaviate" and not self.weaviate_url:
            problems.append("memory_backend=weaviate needs AUTOGPT_WEAVIATE_URL (or WEAVIATE_URL)")
        if self.llm_context_tokens is not None and self.llm_completion_reserve_tokens * 2 > self.llm_context_tokens:
            problems.append("llm_completion_reserve_tokens must be at most half of llm_context_tokens")
        if self.chaos_crash_at:
            from autogpt_workers.crashpoints import parse_rules

            try:
                parse_rules(self.chaos_crash_at)
            except ValueError as exc:
                problems.append(f"AUTOGPT_CHAOS_CRASH_AT: {exc}")
        if self.env == "production":
            if self.chaos_crash_at:
                problems.append("production refuses AUTOGPT_CHAOS_CRASH_AT (test-only fault injection)")
            problems += broker_url_problems(self.broker_url)
            problems += flower_auth_problems(self.flower_basic_auth.get_secret_value())
            if self.api_auth == "disabled":
                problems.append("production refuses AUTOGPT_API_AUTH=disabled (every request needs an API key)")
            if self.openai_api_key is None:
                problems.append("production needs OPENAI_API_KEY")
            problems += database_url_problems(self.database_url)
        if problems:
            raise ConfigError("unsafe or inconsistent settings: " + "; ".join(problems))
        return self

    @property
    def otlp_traces_endpoint(self) -> str | None:
        """Where spans go (OTLP over HTTP), or None: tracing off. The signal-specific variable wins; the base one
        gets the standard ``/v1/traces`` path appended."""
        if self.otel_sdk_disabled or self.otel_traces_exporter.strip().lower() == "none":
            return None
        if self.otel_exporter_otlp_traces_endpoint and self.otel_exporter_otlp_traces_endpoint.strip():
            return self.otel_exporter_otlp_traces_endpoint.strip()
        base = (self.otel_exporter_otlp_endpoint or "").strip()
        return f"{base.rstrip('/')}/v1/traces" if base else None

    def price_per_1k(self, model: str) -> tuple[float, float]:
        return self.llm_prices_per_1k.get(model, self.llm_default_price_per_1k)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
