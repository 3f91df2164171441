#!/usr/bin/env bash
# The scale-out swap tests (issue 13, tests/test_scaleout.py): the same Django
# tasks on BackgrounderBackend and on django-tasks-db with PostgreSQL and a
# db_worker process; the same taskiq app on BackgrounderBroker and on
# taskiq-redis with Redis and `taskiq worker` processes.
#
# Installs Debian's postgresql and redis-server, starts a throwaway cluster and
# a Redis server on loopback ports of their own (so that a server already
# running here is left alone), runs the tests on Python 3.12 (Django 6 has
# django.tasks built in), and stops both servers on exit, whatever happened.
# The tests start and stop the worker processes themselves.
#
#   bash .ci/scaleout.sh [pytest args]          (as root)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
VENV=${VENV:-.venv-scaleout}
LIMIT=${SCALEOUT_TIMEOUT:-600} # seconds for the tests, server start-up excluded

if [ -z "$PYTHON" ]; then
    for p in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
            PYTHON=$(command -v "$p")
            break
        fi
    done
fi
[ -n "$PYTHON" ] || { echo "scaleout: no Python 3.12 found" >&2; exit 1; }

# -- the servers' packages ------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql redis-server >/dev/null
    # Where the packages' scripts started their default servers, stop them:
    # this script runs servers of its own, and leaves none behind.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header | awk '$4 == "online" {print $1, $2}' | while read -r v c; do
            pg_ctlcluster "$v" "$c" stop || true
        done
    fi
    redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true
fi
PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

# -- a free loopback port, for each server ------------------------------------------
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK=$(mktemp -d /tmp/backgrounder-scaleout.XXXXXX)
chmod 755 "$WORK"
REDIS_PID=
cleanup() {
    local rc=$?
    if [ -f "$WORK/pg/postmaster.pid" ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w -t 30 stop >/dev/null || true
    fi
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID" && wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM

# -- PostgreSQL: a cluster of its own, trust auth, loopback only -----------------------
PGPORT=$(free_port)
mkdir "$WORK/pg" "$WORK/pgsock"
chown postgres:postgres "$WORK/pg" "$WORK/pgsock"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -U postgres -A trust --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PGPORT -k $WORK/pgsock -c fsync=off" start >/dev/null
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres

# -- Redis: no persistence, loopback only ------------------------------------------
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping | grep -q PONG
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
echo "scaleout: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT," \
    "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$REDIS_PORT"

# -- the tests: build backgrounder into the venv and run the scaleout marker -----------
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements/scaleout.txt 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
export BACKGROUNDER_SCALEOUT=1
PYTHON="$PYTHON" VENV="$VENV" TYPING=0 timeout --signal=INT --kill-after=30 "$LIMIT" \
    bash scripts/test.sh tests/test_scaleout.py -m scaleout -p no:cacheprovider -rP --durations=0 "$@"
