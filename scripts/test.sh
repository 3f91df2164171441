#!/usr/bin/env bash
# Installs backgrounder (built with warnings as errors) and its test
# dependencies into a virtualenv, then runs the test suite.
#
#   bash scripts/test.sh                      # python3, .venv, the whole suite
#   PYTHON=python3.13 VENV=.venv-313 bash scripts/test.sh -m "not typing"
#
# TYPING=0 leaves out mypy and pyright (then deselect the typing tests with
# -m "not typing" rather than let them skip).  PACKAGE=dist/x.whl tests a
# built wheel instead of building the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TYPING=${TYPING:-1}
PACKAGE=${PACKAGE:-.}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# pip, without the lines this machine's pip.conf adds for absent local indexes.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

reqs=(-r requirements/test.txt -r requirements/django.txt)
if [ "$TYPING" = 1 ]; then
    reqs+=(-r requirements/typing.txt)
fi
pip_install "${reqs[@]}"
"$VENV/bin/python" -m pip uninstall --quiet --yes backgrounder >/dev/null 2>&1 || true
BACKGROUNDER_WERROR=1 pip_install "$PACKAGE"

# The pytest executable, not `python -m pytest`: the source tree must not
# shadow the installed package.
exec "$VENV/bin/pytest" "$@"
