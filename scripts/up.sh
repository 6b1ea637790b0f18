#!/usr/bin/env bash
# Start the local production stack, bound to 127.0.0.1:
#   Prefect server ($PREFECT_PORT, default 4200), MLflow tracking server ($MLFLOW_PORT, default 5000),
#   work pool edgeloop-local + one process worker, the edgeloop-night concurrency limit, and the
#   deployments of prefect.yaml, and the alerts: Prefect automations that POST to a webhook when a
#   night fails or its gate fails (tasks/alerts.py); the webhook is $EDGELOOP_ALERT_WEBHOOK_URL, or
#   else a local receiver ($ALERTS_PORT, default 4290) that appends to $EDGELOOP_HOME/alerts/alerts.jsonl,
#   and the cloud endpoint devices defer to (models/cloud_server.py: teacher@production of this home,
#   followed as it changes; "no teacher" until one is registered) on collab.cloud_url's port
#   (default 8090; EDGELOOP__COLLAB__CLOUD_URL moves it; a non-loopback URL is not started here).
#   PIDs and logs under $EDGELOOP_HOME/run/. Stop with scripts/down.sh.
# MLflow's backend store: EDGELOOP_DB=sqlite ($EDGELOOP_HOME/mlflow.db) or postgres (a local
#   PostgreSQL on 127.0.0.1:$PG_PORT, data in $EDGELOOP_HOME/postgres; scripts/pg.sh); unset = the one
#   the last `up` used. MLFLOW_BACKEND_STORE_URI / MLFLOW_ARTIFACTS_DESTINATION point MLflow at a
#   managed database / an object store instead (docs/operations.md).
# `scripts/up.sh prefect` starts only the Prefect server: the UI over this home's runs.
# Parts already running are left alone, so `make up` twice is harmless (and re-deploys).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$REPO/scripts/pg.sh"
ONLY="${1:-}"
[[ -z "$ONLY" || "$ONLY" == prefect ]] || { echo "usage: $0 [prefect]" >&2; exit 2; }
mkdir -p "$RUN" "$EDGELOOP_HOME/mlartifacts" "$PREFECT_HOME"
cd "$REPO"

if [[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then DB=external
else DB="${EDGELOOP_DB:-$(cat "$MLFLOW_BACKEND_FILE" 2>/dev/null || echo sqlite)}"; fi
case "$DB" in
  sqlite) BACKEND_URI="sqlite:///$EDGELOOP_HOME/mlflow.db" ;;
  postgres) BACKEND_URI="$PG_URI" ;;
  external) BACKEND_URI="${MLFLOW_BACKEND_STORE_URI:?MLflow of this home was on an external database: set MLFLOW_BACKEND_STORE_URI, or DB=sqlite / DB=postgres}" ;;
  *) echo "up: EDGELOOP_DB (make up DB=...) must be sqlite or postgres, not '$DB'" >&2; exit 2 ;;
esac
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$EDGELOOP_HOME/mlartifacts}"

start() {  # start NAME CMD...: detached in its own session (process group), pid to $RUN/NAME.pid
  local name="$1"; shift
  if alive "$name"; then echo "up: $name already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  echo "up: started $name (pid $!, log $RUN/$name.log)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
LOCAL_ALERTS=$([[ -z "${EDGELOOP_ALERT_WEBHOOK_URL:-}" ]] && echo 1 || true)
PARTS=("prefect-server:$PREFECT_PORT:PREFECT_PORT")
if [[ -z "$ONLY" ]]; then
  CLOUD_URL="$("$BIN/python" -m models.cloud_server --print-url)" || { echo "up: cannot read collab.cloud_url" >&2; exit 2; }
  CLOUD_URL="${CLOUD_URL%/}"
  [[ "$CLOUD_URL" =~ ^http://(127\.0\.0\.1|localhost)(:([0-9]+))?$ ]] && CLOUD_PORT="${BASH_REMATCH[3]:-80}" || CLOUD_PORT=""
  PARTS+=("mlflow:$MLFLOW_PORT:MLFLOW_PORT" ${LOCAL_ALERTS:+"alerts:$ALERTS_PORT:ALERTS_PORT"}
          ${CLOUD_PORT:+"cloud:$CLOUD_PORT:EDGELOOP__COLLAB__CLOUD_URL"})
  if [[ "$DB" == postgres ]]; then PARTS+=("postgres:$PG_PORT:PG_PORT"); fi
fi
for part in "${PARTS[@]}"; do
  IFS=: read -r name port var <<<"$part"
  if ! alive "$name" && ! port_free "$port"; then
    echo "up: port $port is taken by a process that $0 did not start; set $var" >&2
    exit 1
  fi
done

t0=$SECONDS
start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
if [[ "$ONLY" == prefect ]]; then
  wait_http "$PREFECT_URL/health" "${PREFECT_START_TIMEOUT:-90}" prefect-server "$RUN/prefect-server.log"
  echo "$PREFECT_URL" >"$RUN/prefect-server.url"  # `edgeloop` runs through this server while it answers
  echo "up: Prefect UI http://127.0.0.1:$PREFECT_PORT (server only; database $PREFECT_SERVER_DATABASE_CONNECTION_URL)"
  exit 0
fi
if [[ "$DB" == postgres ]]; then pg_start; fi
if ! alive mlflow; then
  echo "$DB" >"$MLFLOW_BACKEND_FILE"  # later `up`s and `edgeloop` without the stack keep to this backend
  sed -E 's#(//[^/:@]+):[^/@]*@#\1:***@#; s#\?.*##' <<<"$BACKEND_URI" >"$RUN/mlflow.backend"  # no password
elif [[ "$(cat "$MLFLOW_BACKEND_FILE" 2>/dev/null || echo sqlite)" != "$DB" ]]; then
  echo "up: mlflow is already running on $(cat "$RUN/mlflow.backend" 2>/dev/null); make down first to switch to $DB" >&2
fi
start mlflow "$BIN/mlflow" server --backend-store-uri "$BACKEND_URI" \
  --artifacts-destination "$ARTIFACTS" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
if [[ -n "$LOCAL_ALERTS" ]]; then
  start alerts "$BIN/python" "$REPO/scripts/alert_sink.py" --port "$ALERTS_PORT" --out "$ALERTS_LOG"
fi
wait_http "$PREFECT_URL/health" "${PREFECT_START_TIMEOUT:-90}" prefect-server "$RUN/prefect-server.log"
echo "$PREFECT_URL" >"$RUN/prefect-server.url"  # `edgeloop` runs through this server while it answers
wait_http "$MLFLOW_URL/health" "${MLFLOW_START_TIMEOUT:-120}" mlflow "$RUN/mlflow.log"
echo "$MLFLOW_URL" >"$RUN/mlflow.url"  # ... and tracks to this one
echo "up: mlflow backend store: $DB ($(cat "$RUN/mlflow.backend" 2>/dev/null)), artifacts: $ARTIFACTS"

# The cloud teacher: started once MLflow answers (it reads teacher@production there, in the background).
if [[ -n "$CLOUD_PORT" ]]; then
  MLFLOW_TRACKING_URI="$MLFLOW_URL" EDGELOOP__MLFLOW__TRACKING_URI="$MLFLOW_URL" \
    start cloud "$BIN/python" -m models.cloud_server --host 127.0.0.1 --port "$CLOUD_PORT"
  wait_http "$CLOUD_URL/health" "${CLOUD_START_TIMEOUT:-60}" cloud "$RUN/cloud.log"
  echo "$CLOUD_URL" >"$RUN/cloud.url"
  for _ in $(seq 60); do  # a registered teacher loads in the background: say what it serves once it knows
    HEALTH="$(curl -fsS --max-time 3 "$CLOUD_URL/health" || true)"; [[ "$HEALTH" == *'"status":"loading"'* ]] || break; sleep 0.5
  done
  echo "up: cloud teacher at $CLOUD_URL: $("$BIN/python" -c 'import json, sys; h = json.loads(sys.argv[1] or "{}")
s = h.get("status", "no answer")
print("serving teacher v%s" % h["teacher_version"] if s == "ok" else "still loading teacher@production (a first start "
      "exports it to ONNX); it answers 503 meanwhile" if s == "loading" else "%s (%s): it answers 503 and devices "
      "answer alone (flagged) until a teacher is registered; it checks every minute" % (s, h.get("reason")))' "$HEALTH")"
else
  echo "up: collab.cloud_url is $CLOUD_URL, not on this machine: no cloud teacher started here"
fi

export PREFECT_API_URL="$PREFECT_URL"
"$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 \
  || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
echo "up: work pool $POOL ready"
"$BIN/prefect" global-concurrency-limit inspect edgeloop-night >/dev/null 2>&1 \
  || "$BIN/prefect" global-concurrency-limit create edgeloop-night --limit 1 >/dev/null
echo "up: concurrency limit edgeloop-night (1 slot) ready"
if [[ -n "$LOCAL_ALERTS" ]]; then
  wait_http "$ALERTS_URL/health" 30 alerts "$RUN/alerts.log"
fi
ALERT_WEBHOOK="${EDGELOOP_ALERT_WEBHOOK_URL:-$ALERTS_URL/alert}"
"$BIN/python" -m tasks.alerts setup --webhook-url "$ALERT_WEBHOOK" >"$RUN/alerts-setup.log" 2>&1 \
  || { echo "up: creating the alert automations failed; see $RUN/alerts-setup.log" >&2; tail -n 20 "$RUN/alerts-setup.log" >&2; exit 1; }
echo "up: alerts ready: a failed night or gate POSTs to $([[ -n "$LOCAL_ALERTS" ]] && echo "$ALERTS_URL/alert -> $ALERTS_LOG" || echo "\$EDGELOOP_ALERT_WEBHOOK_URL")"

t1=$SECONDS
"$BIN/prefect" --no-prompt deploy --all >"$RUN/deploy.log" 2>&1 \
  || { echo "up: deploy failed; see $RUN/deploy.log" >&2; tail -n 20 "$RUN/deploy.log" >&2; exit 1; }
echo "up: deployments applied in $((SECONDS - t1))s ($(grep -c "Deployment '" "$RUN/deploy.log" || true) lines; log $RUN/deploy.log)"

# Flow runs are children of the worker: they inherit this environment, so they log to the
# Prefect server and track to the MLflow server (the night's settings read EDGELOOP__MLFLOW__*).
MLFLOW_TRACKING_URI="$MLFLOW_URL" EDGELOOP__MLFLOW__TRACKING_URI="$MLFLOW_URL" \
  start worker "$BIN/prefect" worker start --pool "$POOL" --name "edgeloop-worker-$(hostname -s)" ${WORKER_ARGS:-}
echo "up: ready in $((SECONDS - t0))s — Prefect UI http://127.0.0.1:$PREFECT_PORT  MLflow UI $MLFLOW_URL${CLOUD_PORT:+  cloud $CLOUD_URL}"
echo "    run a night now:  PREFECT_API_URL=$PREFECT_URL $BIN/prefect deployment run nightly/nightly-adhoc"
