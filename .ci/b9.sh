#!/usr/bin/env bash
# CI: B9 (bench/b9.py) once in its quick form: uvicorn + Starlette/FastAPI
# under wrk, every system x io/cpu work, and the chart drawn from its JSON.
# Proves that the benchmark runs and that no background call is lost (b9.py
# exits 1 then); it asserts no speed. Installs wrk (Debian) and
# requirements/bench.txt itself; uses the virtualenv of scripts/test.sh
# (VENV, default .venv), building backgrounder into it if it has none.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

if ! command -v wrk >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q wrk >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
vpy="$(cd "$VENV" && pwd)/bin/python"
# away from the source tree, which would shadow the installed package
if ! (cd /tmp && "$vpy" -c "import backgrounder._backgrounder") 2>/dev/null; then
    BACKGROUNDER_WERROR=1 pip_install .
fi
pip_install -r requirements/bench.txt

out=$(mktemp -d)
b9_pid=
cleanup() {
    # b9.py stops its servers itself; this is for a timeout or an interrupt
    if [ -n "$b9_pid" ]; then kill -- -"$b9_pid" 2>/dev/null || true; fi
    rm -rf "$out"
}
trap cleanup EXIT

# its own process group, so that cleanup reaches the servers too
setsid timeout --kill-after=30 900 "$VENV/bin/python" bench/b9.py --quick \
    --json "$out/b9.json" --chart "$out/b9.svg" &
b9_pid=$!
wait "$b9_pid"
b9_pid=
test -s "$out/b9.svg"
