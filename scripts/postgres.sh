#!/usr/bin/env bash
# A throwaway PostgreSQL server for the fault tests and benchmarks (a real database under the distributed plan).
#
#   scripts/postgres.sh [start] [DIR]   initdb DIR/data (once), start the server (if not running), create database
#                                       `modformer` (once); print its URL, as optuna/SQLAlchemy take it
#   scripts/postgres.sh url [DIR]       print the URL of the server in DIR
#   scripts/postgres.sh stop [DIR]      stop the server in DIR (nothing to do when none runs)
#
# DIR defaults to runs/postgres. Idempotent. The server listens on a unix socket in DIR only (no TCP port, so two
# checkouts on one machine never collide), trusts local connections and syncs nothing to disk: for tests, not data.
# Without PostgreSQL's server binaries it installs the distribution's (`apt-get install postgresql`). PostgreSQL
# refuses to run as root, so as root DIR is handed to user postgres and the server runs as that user (in a folder
# under /tmp when that user cannot reach DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
ACTION=${1:-start}
DIR=${2:-runs/postgres}
PORT=5432  # names the socket file only
DB=modformer

server_bin() {  # the newest installed server's bin folder (Debian keeps them under /usr/lib/postgresql/N/bin)
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ] && command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/postgres" ]; then
    found=$(pg_config --bindir)
  fi
  echo "$found"
}

as_owner() {  # run a server command as the data folder's owner: postgres when we are root, else ourselves
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")  # from /: user postgres may not enter our working folder
  else
    "$@"
  fi
}

BIN=$(server_bin)
if [ -z "$BIN" ] && [ "$ACTION" = start ]; then
  echo "no PostgreSQL server installed: installing the distribution's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN=$(server_bin)
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# As root the server runs as user postgres. Where that user cannot reach DIR (inside a private temporary folder or a
# home folder), the cluster lives in a folder of its own under /tmp, named after DIR, so start, url and stop agree.
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DIR" 2>/dev/null; then
  DIR=/tmp/modformer-postgres-$(printf %s "$DIR" | sha1sum | cut -c1-12)
  mkdir -p "$DIR"
fi
URL="postgresql+psycopg2://postgres@/$DB?host=$DIR&port=$PORT"

running() { [ -n "$BIN" ] && [ -f "$DIR/data/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

case "$ACTION" in
  start)
    [ -n "$BIN" ] || { echo "no PostgreSQL server binaries found" >&2; exit 1; }
    if [ "$(id -u)" = 0 ]; then
      chown -R postgres "$DIR"
    fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      as_owner "$BIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync -E UTF8 >"$DIR/initdb.log"
    fi
    if ! running; then
      options="-c listen_addresses='' -k $DIR -p $PORT -c fsync=off -c synchronous_commit=off -c max_connections=200"
      as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -o "$options" -w -t 60 start >/dev/null
    fi
    if ! as_owner "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" postgres | grep -q 1; then
      as_owner "$BIN/createdb" -h "$DIR" -p "$PORT" -U postgres "$DB"
    fi
    echo "$URL"
    ;;
  url)
    echo "$URL"
    ;;
  stop)
    if running; then
      as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
    fi
    ;;
  *)
    echo "usage: $0 [start|url|stop] [DIR]" >&2
    exit 2
    ;;
esac
