#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2012  # svc_* functions are called indirectly ("svc_$svc"); ls of /etc/postgresql is fine
# Bring up (or check) the local services the project needs: PostgreSQL, Redis, RabbitMQ.
#
#   scripts/services.sh up     # default: install (Debian packages) / start what is missing; idempotent
#   scripts/services.sh check  # only report; exit 1 if anything is down
#   scripts/services.sh up redis rabbitmq   # only some of: postgres redis rabbitmq
#
# No systemd is assumed: services are started directly (pg_ctlcluster, redis-server --daemonize,
# rabbitmq-server -detached). When everything is already up this takes well under a second.
set -euo pipefail

MODE="${1:-up}"
case "$MODE" in
  up | check) ;;
  *)
    echo "usage: $0 [up|check] [postgres] [redis] [rabbitmq]" >&2
    exit 2
    ;;
esac
shift || true
SELECTED=("$@")
if [ "${#SELECTED[@]}" -eq 0 ]; then
  SELECTED=(postgres redis rabbitmq)
fi
for svc in "${SELECTED[@]}"; do
  case "$svc" in
    postgres | redis | rabbitmq) ;;
    *)
      echo "unknown service: $svc (postgres, redis, rabbitmq)" >&2
      exit 2
      ;;
  esac
done

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
AMQP_PORT=5672
MGMT_URL=http://127.0.0.1:15672
VHOST=autogpt_test
DATABASES=(autogpt autogpt_test)

export PGCONNECT_TIMEOUT=3
export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
fi

FAILED=0
APT_UPDATED=0

log() { printf '%s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if ! have apt-get; then
    log "error: apt-get not found; install $* by hand" >&2
    return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    "${SUDO[@]}" apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds or SECONDS pass.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.5
  done
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL
pg_version() { ls /etc/postgresql 2>/dev/null | head -1 || true; }
pg_up() { have pg_isready && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
pg_psql() { psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"; }

pg_trust_local_tcp() {
  # Fresh Debian clusters ask for a password on TCP; the project's dev/test URLs use none.
  local ver hba tmp
  ver="$(pg_version)"
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! grep -q '^# autogpt-workers: trust local TCP' "$hba"; then
    tmp="$(mktemp)"
    {
      echo '# autogpt-workers: trust local TCP (development/test machines only)'
      echo 'host all all 127.0.0.1/32 trust'
      echo 'host all all ::1/128 trust'
      cat "$hba"
    } >"$tmp"
    # cat > keeps the file's owner and mode
    "${SUDO[@]}" sh -c "cat '$tmp' > '$hba'"
    rm -f "$tmp"
  fi
  "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >/dev/null
  wait_for 10 pg_psql -c 'select 1'
}

svc_postgres() {
  local state=up
  if ! pg_up; then
    if [ "$MODE" = check ]; then
      log "postgres: down"
      FAILED=1
      return
    fi
    state=started
    if ! have pg_ctlcluster || [ -z "$(pg_version)" ]; then
      apt_install postgresql postgresql-client
      state=installed+started
    fi
    # the package's postinst may already have started it
    if ! pg_up; then
      "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start
    fi
    if ! wait_for 30 pg_up; then
      log "postgres: FAILED to start (see /var/log/postgresql/)"
      FAILED=1
      return
    fi
  fi

  # One query that both proves password-less TCP access works and lists the databases.
  local existing
  if ! existing="$(pg_psql -tAc "select datname from pg_database" 2>/dev/null)"; then
    if [ "$MODE" = check ]; then
      log "postgres: up, but 'psql -h $PG_HOST -U postgres' is refused (no trust auth)"
      FAILED=1
      return
    fi
    if ! pg_trust_local_tcp; then
      log "postgres: up, but password-less TCP access as postgres could not be set up"
      FAILED=1
      return
    fi
    state="$state, trust auth on 127.0.0.1"
    existing="$(pg_psql -tAc "select datname from pg_database")"
  fi

  local db missing=()
  for db in "${DATABASES[@]}"; do
    if ! grep -qx "$db" <<<"$existing"; then
      missing+=("$db")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$MODE" = check ]; then
      log "postgres: $state, missing databases: ${missing[*]}"
      FAILED=1
      return
    fi
    for db in "${missing[@]}"; do
      pg_psql -c "create database \"$db\"" >/dev/null
    done
    state="$state, created ${missing[*]}"
  fi
  log "postgres: $state"
}

# --------------------------------------------------------------------- Redis
redis_up() { have redis-cli && [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

svc_redis() {
  local state=up
  if ! redis_up; then
    if [ "$MODE" = check ]; then
      log "redis: down"
      FAILED=1
      return
    fi
    state=started
    if ! have redis-server || ! have redis-cli; then
      apt_install redis-server redis-tools
      state=installed+started
    fi
    if ! redis_up; then
      "${SUDO[@]}" mkdir -p /var/lib/redis /var/log/redis
      "${SUDO[@]}" redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    fi
    if ! wait_for 15 redis_up; then
      log "redis: FAILED to start (see /var/log/redis/ci.log)"
      FAILED=1
      return
    fi
  fi
  log "redis: $state"
}

# ------------------------------------------------------------------ RabbitMQ
amqp_up() { tcp_open 127.0.0.1 "$AMQP_PORT"; }
mgmt_up() { curl -s -o /dev/null -m 2 "$MGMT_URL/"; }
vhost_ok() {
  curl -sf -o /dev/null -m 2 -u guest:guest "$MGMT_URL/api/vhosts/$VHOST" &&
    curl -sf -o /dev/null -m 2 -u guest:guest "$MGMT_URL/api/permissions/$VHOST/guest"
}

rabbit_await_startup() {
  local deadline=$((SECONDS + 60))
  # right after -detached the node may not be registered yet: await_startup fails at first
  until "${SUDO[@]}" rabbitmqctl -q await_startup >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 1
  done
  wait_for 30 amqp_up
}

svc_rabbitmq() {
  local state=up
  if [ "$MODE" = check ]; then
    if ! amqp_up; then
      log "rabbitmq: down"
      FAILED=1
    elif ! have curl || ! mgmt_up; then
      log "rabbitmq: up, but the management API (:15672) does not answer"
      FAILED=1
    elif ! vhost_ok; then
      log "rabbitmq: up, but vhost $VHOST or guest's permissions on it are missing"
      FAILED=1
    else
      log "rabbitmq: up"
    fi
    return
  fi

  have curl || apt_install curl ca-certificates
  if ! amqp_up; then
    state=started
    if ! have rabbitmq-server || ! have rabbitmqctl; then
      apt_install rabbitmq-server
      state=installed+started
    fi
    if ! amqp_up; then
      "${SUDO[@]}" rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    if ! rabbit_await_startup; then
      log "rabbitmq: FAILED to start (see /var/log/rabbitmq/)"
      FAILED=1
      return
    fi
  fi

  if ! mgmt_up; then
    "${SUDO[@]}" rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    state="$state, management enabled"
    if ! wait_for 30 mgmt_up; then
      log "rabbitmq: $state, but the management API (:15672) does not answer"
      FAILED=1
      return
    fi
  fi

  if ! vhost_ok; then
    # Read the list whole first: `| grep -q` under pipefail can fail the pipe with SIGPIPE.
    local vhosts
    vhosts="$("${SUDO[@]}" rabbitmqctl -q list_vhosts name 2>/dev/null || true)"
    if ! grep -qx "$VHOST" <<<"$vhosts"; then
      "${SUDO[@]}" rabbitmqctl -q add_vhost "$VHOST" >/dev/null
    fi
    "${SUDO[@]}" rabbitmqctl -q set_permissions -p "$VHOST" guest ".*" ".*" ".*" >/dev/null
    state="$state, vhost $VHOST ready"
  fi
  log "rabbitmq: $state"
}

for svc in "${SELECTED[@]}"; do
  "svc_$svc"
done
exit "$FAILED"
