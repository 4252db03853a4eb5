# autogpt-workers developer entry points. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/autogpt-workers

# Settings for `make test`: its own database and RabbitMQ vhost (created by scripts/services.sh).
TEST_ENV := AUTOGPT_ENV=test \
	AUTOGPT_DATABASE_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/autogpt_test \
	AUTOGPT_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/autogpt_test \
	AUTOGPT_REQUIRE_TOOLS=1

.PHONY: help services venv ops-tools api-tools run test test-unit lint format typecheck bench chaos migrate clean distclean

help: ## List the targets with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

services: ## Install/start PostgreSQL, Redis, RabbitMQ (idempotent; scripts/services.sh up)
	@bash scripts/services.sh up

venv: ## Create .venv and pip install -e '.[dev]' when pyproject.toml changed
	@bash scripts/venv.sh

ops-tools: ## Install prometheus/promtool and chromium for tests/ops if missing (Debian packages, idempotent)
	@missing=""; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "apt-get install -y$$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
				>/dev/null 2>&1 || echo "warning: could not install$$missing; the tests that need it skip"; \
		else \
			echo "warning:$$missing not installed (apt-get install -y$$missing); the tests that need it skip"; \
		fi; \
	fi

api-tools: ## Install newman (npm) into .tools/ for the Agent Protocol Postman suite; npm from Debian if missing (idempotent)
	@if [ ! -x .tools/node_modules/.bin/newman ]; then \
		if ! command -v npm >/dev/null 2>&1; then \
			if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
				echo "apt-get install -y npm"; \
				(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm) \
					>/dev/null 2>&1 || echo "warning: could not install npm"; \
			else \
				echo "warning: npm not installed (apt-get install -y npm)"; \
			fi; \
		fi; \
		if command -v npm >/dev/null 2>&1; then \
			echo "npm install --prefix .tools newman@6"; \
			npm install --prefix .tools --no-audit --no-fund --silent newman@6 \
				|| echo "warning: could not install newman"; \
		fi; \
		[ -x .tools/node_modules/.bin/newman ] || echo "warning: no newman: the Postman suite test skips (fails under AUTOGPT_REQUIRE_TOOLS=1, as in make test)"; \
	fi

run: services venv ## Run the whole stack locally (autogpt-workers run)
	$(CLI) run

test: services venv ops-tools api-tools ## Import contracts, then the whole test suite against the local services
	$(VENV)/bin/lint-imports
	export $(TEST_ENV) && $(PY) -m pytest -q -ra

test-unit: venv ## Unit tests only (tests/unit), no services needed
	$(PY) -m pytest -q -ra tests/unit

lint: venv ## ruff check
	$(VENV)/bin/ruff check .

format: venv ## ruff format (rewrites files)
	$(VENV)/bin/ruff format .

typecheck: venv ## mypy on the packages listed in pyproject.toml
	$(VENV)/bin/mypy

bench: services venv ## Benchmark vs floor, limit, LangGraph peer; memory recall and top-k (BENCH_ARGS=--quick); writes bench/results.*
	@if [ -f bench/__main__.py ]; then \
		if [ ! -f $(VENV)/.installed-bench ] || [ pyproject.toml -nt $(VENV)/.installed-bench ]; then \
			echo "pip install -e '.[dev,bench]'"; \
			$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' && touch $(VENV)/.installed-bench; \
		fi; \
		echo "$(PY) -m bench $(BENCH_ARGS)"; $(PY) -m bench $(BENCH_ARGS); \
	else \
		echo "no benchmark yet"; \
	fi

chaos: services venv ## Chaos suite: every fault scenario twice on private services, checker table (CHAOS_ARGS=...)
	$(PY) -m chaos $(CHAOS_ARGS)

migrate: services venv ## Apply the database migrations (autogpt-workers migrate)
	$(CLI) migrate

clean: ## Remove var/, artifacts/ and tool caches (keeps .venv)
	rm -rf var/ artifacts/ .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean ## clean, and also remove .venv and *.egg-info
	rm -rf $(VENV) *.egg-info
