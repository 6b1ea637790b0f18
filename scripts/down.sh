#!/usr/bin/env bash
# Stop exactly what scripts/up.sh started: the process groups whose leaders' PIDs are in
# $EDGELOOP_HOME/run/*.pid (worker first, so no flow run starts while the servers go away; then the
# cloud teacher), and the
# local PostgreSQL of `make up DB=postgres` after MLflow (pg_ctl stop -m fast).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$REPO/scripts/pg.sh"
rm -f "$RUN/prefect-server.url" "$RUN/mlflow.url" "$RUN/cloud.url"  # from now on `edgeloop` runs on its own

stop() {  # stop NAME: INT then TERM the process group (what Ctrl-C would do), KILL after ${STOP_TIMEOUT:-15}s
  local f="$RUN/$1.pid" pid t0=$SECONDS
  [[ -f "$f" ]] || { echo "down: $1 not started by up"; return 0; }
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && (( SECONDS - t0 < 5 )); do sleep 0.3; done
    kill -TERM -- "-$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && (( SECONDS - t0 < ${STOP_TIMEOUT:-15} )); do sleep 0.3; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "down: $1 (pid $pid) still running after ${STOP_TIMEOUT:-15}s: KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    echo "down: stopped $1 (pid $pid) in $((SECONDS - t0))s"
  else
    echo "down: $1 (pid $pid) was not running"
  fi
  rm -f "$f"
}
stop worker
stop cloud
stop mlflow
pg_stop
stop prefect-server
stop alerts  # last: alerts the server sends while stopping still arrive
