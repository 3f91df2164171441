#!/usr/bin/env bash
# The two longest steps of .ci/run, one after the other: the Debian sid
# chroot (Python 3.14, 3.15 and python3.14-dbg) and the sanitizers.  .ci/run runs this beside
# its other steps (two streams for two cores); each step works on its own
# copy of the tree and its own virtualenvs, so the two never share a build.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step() { printf '\n=== %s (at %ss of this stream)\n' "$*" "$(( $(date +%s) - start ))"; }
PY311=$1

step "Python 3.14 and 3.15 in a Debian sid chroot: the whole suite with -W error; python3.14-dbg -X dev: core and refleak tests"
bash .ci/py315.sh

step "ASan+UBSan: the whole suite; TSan: the pool and bridge tests (any report fails)"
PYTHON=$PY311 bash .ci/sanitizers.sh

step "done"
