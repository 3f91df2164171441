#!/usr/bin/env bash
# Esmerald's tests, in a virtualenv of their own.
#
# Esmerald 3.9.4 (the newest) fails every request with lilya >= 0.24, and
# Ravyn, its successor, needs the newest Lilya: they cannot share the suite's
# virtualenv (requirements/test.txt has Ravyn). This builds .venv-esmerald
# from requirements/test.txt without Ravyn plus requirements/esmerald.txt
# (lilya 0.23.3, esmerald 3.9.4), installs backgrounder built with -Werror,
# and runs the Esmerald tests of tests/test_frameworks.py and
# tests/test_docs_examples.py. BACKGROUNDER_TEST_FRAMEWORKS names esmerald,
# so a missing Esmerald fails the run instead of skipping its tests.
#
#   bash .ci/edges.sh                 # PYTHON=python3.x to choose the Python
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-esmerald

pip_install() {
    timeout 900 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip_install -r requirements/test.txt
"$VENV/bin/python" -m pip uninstall --quiet --yes ravyn
pip_install -r requirements/esmerald.txt
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c 'import esmerald, lilya; print("esmerald", esmerald.__version__, "lilya", lilya.__version__)'
BACKGROUNDER_WERROR=1 pip_install .

# The pytest executable, not `python -m pytest`: the source tree must not
# shadow the installed package.
BACKGROUNDER_TEST_FRAMEWORKS=starlette,fastapi,lilya,esmerald timeout 900 \
    "$VENV/bin/pytest" tests/test_frameworks.py tests/test_docs_examples.py \
    -k esmerald -p no:cacheprovider -q
