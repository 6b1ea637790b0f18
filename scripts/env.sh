# Shared settings of scripts/up.sh, down.sh, status.sh (sourced, not run).
# Everything binds to 127.0.0.1; ports and the home come from the environment.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export EDGELOOP_HOME="${EDGELOOP_HOME:-$REPO/var}"
export EDGELOOP_REPO="$REPO"
export EDGELOOP_TZ="${EDGELOOP_TZ:-UTC}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
ALERTS_PORT="${ALERTS_PORT:-4290}"  # the local alert receiver (scripts/alert_sink.py)
POOL="${EDGELOOP_POOL:-edgeloop-local}"
BIN="${EDGELOOP_BIN:-$REPO/.venv/bin}"
RUN="$EDGELOOP_HOME/run"
PREFECT_URL="http://127.0.0.1:$PREFECT_PORT/api"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
ALERTS_URL="http://127.0.0.1:$ALERTS_PORT"
ALERTS_LOG="$EDGELOOP_HOME/alerts/alerts.jsonl"
# Offline box: no telemetry, no hub; library loggers reach the run logs (edgeloop/runtime.py OFFLINE_ENV).
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false \
  PREFECT_LOGGING_LEVEL=INFO PREFECT_LOGGING_EXTRA_LOGGERS=models,data_contracts,edgeloop,flows,tasks
# One Prefect database per EDGELOOP_HOME, shared by the server and by `edgeloop` without a server
# (edgeloop/runtime.py prepare_process sets the same URL), so every CLI night shows in the UI.
export PREFECT_HOME="$EDGELOOP_HOME/prefect"
export PREFECT_SERVER_DATABASE_CONNECTION_URL="${PREFECT_SERVER_DATABASE_CONNECTION_URL:-${PREFECT_API_DATABASE_CONNECTION_URL:-sqlite+aiosqlite:///$PREFECT_HOME/prefect.db}}"
# MLflow's backend store: sqlite (default), postgres (a local PostgreSQL under $EDGELOOP_HOME/postgres)
# or external (MLFLOW_BACKEND_STORE_URI). Without DB / EDGELOOP_DB, the one the last `up` used.
MLFLOW_BACKEND_FILE="$EDGELOOP_HOME/mlflow-backend"
PG_PORT="${PG_PORT:-5433}"
PG_ROOT="$EDGELOOP_HOME/postgres"   # data/ (the cluster, owned by the server's user) and pgpass
PG_USER=edgeloop PG_DB=mlflow

alive() {  # alive NAME: the process in $RUN/NAME.pid is running
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_http() {  # wait_http URL SECONDS NAME LOG
  local url="$1" limit="$2" name="$3" log="$4" t0=$SECONDS
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if ! alive "$name"; then
      echo "up: $name exited before it answered $url; last lines of $log:" >&2
      tail -n 20 "$log" >&2; return 1
    fi
    if (( SECONDS - t0 >= limit )); then
      echo "up: $name did not answer $url within ${limit}s; see $log" >&2; return 1
    fi
    sleep 0.5
  done
  echo "up: $name healthy at $url after $((SECONDS - t0))s"
}
