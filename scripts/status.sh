#!/usr/bin/env bash
# What scripts/up.sh started, whether each part answers, and the deployments with their next runs.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$REPO/scripts/pg.sh"
for name in prefect-server mlflow worker alerts cloud postgres; do
  [[ "$name" == postgres && ! -f "$RUN/postgres.pid" ]] && continue  # only with DB=postgres
  if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"), log $RUN/$name.log)"
  else echo "$name: not running"; fi
done
echo "mlflow backend store: $(cat "$MLFLOW_BACKEND_FILE" 2>/dev/null || echo sqlite) ($(cat "$RUN/mlflow.backend" 2>/dev/null || echo "sqlite:///$EDGELOOP_HOME/mlflow.db"))"
echo "prefect database: $PREFECT_SERVER_DATABASE_CONNECTION_URL (shared with \`edgeloop\` runs)"
curl -fsS -o /dev/null --max-time 3 "$PREFECT_URL/health" && echo "prefect api: healthy ($PREFECT_URL)" || echo "prefect api: no answer ($PREFECT_URL)"
curl -fsS -o /dev/null --max-time 3 "$MLFLOW_URL/health" && echo "mlflow: healthy ($MLFLOW_URL)" || echo "mlflow: no answer ($MLFLOW_URL)"
if [[ -f "$RUN/cloud.url" ]]; then
  echo "cloud: $(curl -fsS --max-time 3 "$(cat "$RUN/cloud.url")/health" || echo "no answer") ($(cat "$RUN/cloud.url"))"
fi
if alive alerts; then
  echo "alerts: $( [[ -f "$ALERTS_LOG" ]] && wc -l <"$ALERTS_LOG" || echo 0) received in $ALERTS_LOG"
  [[ -f "$ALERTS_LOG" ]] && tail -n 3 "$ALERTS_LOG" | sed 's/^/  /'
fi
if alive prefect-server; then
  PREFECT_API_URL="$PREFECT_URL" "$BIN/prefect" deployment ls 2>/dev/null | sed 's/^/  /'
  PREFECT_API_URL="$PREFECT_URL" "$BIN/prefect" global-concurrency-limit ls 2>/dev/null | sed 's/^/  /'
fi
