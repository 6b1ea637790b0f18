# The local PostgreSQL behind MLflow for `make up DB=postgres` (sourced by up.sh, down.sh, status.sh
# after env.sh). Debian's `postgresql` package; a cluster of its own in $PG_ROOT/data, listening on
# 127.0.0.1:$PG_PORT only (no Unix socket), password auth (scram-sha-256) for the superuser
# $PG_USER, whose password lives only in $PG_ROOT/pgpass (0600; libpq reads it via PGPASSFILE, so
# it never shows in a command line). As root, the server runs as the `postgres` user (initdb refuses root).

pg_bindir() {  # the newest /usr/lib/postgresql/*/bin, or where pg_ctl is on PATH; PG_BIN overrides
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
  local d; d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n 1)"
  [[ -z "$d" ]] && command -v pg_ctl >/dev/null && d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  echo "$d"
}

as_pg() {  # as_pg CMD ARGS...: run as the server's user (postgres when we are root)
  if (( EUID == 0 )); then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi
}

export PGPASSFILE="$PG_ROOT/pgpass"
PG_URI="postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"

pg_init() {  # pg_init BINDIR: create the cluster once (password auth, loopback only)
  local bin="$1" data="$PG_ROOT/data" pw pwfile
  [[ -f "$data/PG_VERSION" ]] && return 0
  mkdir -p "$PG_ROOT"; chmod 755 "$PG_ROOT"
  if (( EUID == 0 )) && ! su postgres -s /bin/sh -c "test -x $(printf '%q' "$PG_ROOT")"; then
    echo "up: the postgres user cannot reach $PG_ROOT (a parent folder is private); use an EDGELOOP_HOME it can enter" >&2
    return 1
  fi
  mkdir -p "$data"; chmod 700 "$data"
  pw="$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
  pwfile="$(mktemp "$PG_ROOT/.pw.XXXXXX")"; printf '%s\n' "$pw" >"$pwfile"
  if (( EUID == 0 )); then chown postgres "$data" "$pwfile"; fi
  as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 \
    >"$RUN/postgres-initdb.log" 2>&1 \
    || { rm -f "$pwfile"; echo "up: initdb failed; see $RUN/postgres-initdb.log" >&2; tail -n 20 "$RUN/postgres-initdb.log" >&2; return 1; }
  rm -f "$pwfile"
  (umask 077; printf '127.0.0.1:*:*:%s:%s\n' "$PG_USER" "$pw" >"$PGPASSFILE")
  # Loopback TCP only: no Unix socket (nobody else on the box gets peer/trust access).
  printf "\n# edgeloop (scripts/pg.sh)\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" >>"$data/postgresql.conf"
  echo "up: created a PostgreSQL cluster in $data (superuser $PG_USER, password in $PGPASSFILE)"
}

pg_start() {  # pg_start: init if needed, start on 127.0.0.1:$PG_PORT, create $PG_DB; pid to $RUN/postgres.pid
  local bin t0=$SECONDS
  bin="$(pg_bindir)"
  if [[ -z "$bin" || ! -x "$bin/pg_ctl" ]]; then
    echo "up: DB=postgres needs PostgreSQL: apt-get update && apt-get install -y postgresql (or set PG_BIN)" >&2
    return 1
  fi
  if alive postgres; then echo "up: postgres already running (pid $(cat "$RUN/postgres.pid"))"; return 0; fi
  pg_init "$bin" || return 1
  touch "$RUN/postgres.log"; (( EUID == 0 )) && chown postgres "$RUN/postgres.log"
  as_pg "$bin/pg_ctl" -D "$PG_ROOT/data" -l "$RUN/postgres.log" -w -t "${PG_START_TIMEOUT:-60}" -o "-p $PG_PORT" start \
    >/dev/null || { echo "up: postgres did not start; last lines of $RUN/postgres.log:" >&2; tail -n 20 "$RUN/postgres.log" >&2; return 1; }
  head -n 1 "$PG_ROOT/data/postmaster.pid" >"$RUN/postgres.pid"
  local has
  has="$("$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -w -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" \
    || { echo "up: cannot connect to postgres on 127.0.0.1:$PG_PORT as $PG_USER" >&2; return 1; }
  [[ "$has" == 1 ]] || "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -w "$PG_DB"
  echo "up: started postgres (pid $(cat "$RUN/postgres.pid"), 127.0.0.1:$PG_PORT, database $PG_DB) in $((SECONDS - t0))s; log $RUN/postgres.log"
}

pg_stop() {  # pg_stop: fast shutdown (what a DBA would do), then forget the pid
  local bin t0=$SECONDS
  [[ -f "$RUN/postgres.pid" ]] || return 0
  if alive postgres; then
    bin="$(pg_bindir)"
    as_pg "$bin/pg_ctl" -D "$PG_ROOT/data" -m fast -w -t "${STOP_TIMEOUT:-15}" stop >/dev/null 2>&1 \
      || { echo "down: pg_ctl stop failed; stopping postgres by signal"; stop postgres; return; }
    echo "down: stopped postgres (pid $(cat "$RUN/postgres.pid")) in $((SECONDS - t0))s"
  else
    echo "down: postgres (pid $(cat "$RUN/postgres.pid")) was not running"
  fi
  rm -f "$RUN/postgres.pid"
}
