#!/usr/bin/env bash
# Valgrind memcheck over the engine's core tests.
#
#   bash .ci/valgrind.sh [DIR]
#
# Builds backgrounder with BACKGROUNDER_DEBUG=1 (-O0 -g3: exact stacks) into
# DIR/.venv-valgrind (DIR defaults to the repository root) and runs
# VALGRIND_TESTS under memcheck, with PYTHONMALLOC=malloc so that every Python
# object is a malloc() block memcheck follows.  Fails if a test fails, or if
# memcheck finds a block "definitely lost" or a memory error (invalid
# read/write/free, use of uninitialised memory) with a frame of the extension
# in its stack.  What it finds in CPython alone (this CPython build has a few
# uninitialised-value warnings of its own, at import, with or without
# backgrounder) is counted and shown, not failed on.  Extra arguments after DIR
# go to pytest.  Subprocesses the tests start run without valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DIR=${1:-.}
shift || true
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PYTHON=${PYTHON:-python3}
VENV=$DIR/.venv-valgrind
# The engine's core: awaited calls through the pool and the bridge, Tasks,
# @background handles, configure(), and the bad-input property tests.
VALGRIND_TESTS=(tests/test_task.py tests/test_tasks.py tests/test_background.py tests/test_config.py
                tests/test_properties.py)

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/backgrounder-valgrind.XXXXXX")
trap 'rm -rf "$LOGS"' EXIT

pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

echo "--- debug build, into $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install -r requirements/test.txt
# From a copy of the tree: setuptools reuses the object files in build/ when
# they look newer than the sources, whatever switches built them.
src=$(mktemp -d "${TMPDIR:-/tmp}/backgrounder-src.XXXXXX")
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude=./dist --exclude='./.venv*' \
    --exclude='*.egg-info' --exclude='*.so' --exclude='*.o' --exclude=__pycache__ \
    --exclude=./.bench --exclude=./site --exclude=./.hypothesis --exclude='./.*_cache' \
    --exclude="./${DIR#"$ROOT"/}" -cf - . | tar -C "$src" -xf -
"$VENV/bin/python" -m pip uninstall --quiet --yes backgrounder >/dev/null 2>&1 || true
BACKGROUNDER_DEBUG=1 BACKGROUNDER_WERROR=1 pip_install --no-deps --no-cache-dir "$src"
rm -rf "$src"

echo "--- memcheck: ${VALGRIND_TESTS[*]}"
set +e
# 25 hypothesis examples per property test, not 250: memcheck is ~30x slower.
PYTHONMALLOC=malloc BACKGROUNDER_HYPOTHESIS_EXAMPLES=${BACKGROUNDER_HYPOTHESIS_EXAMPLES:-25} \
    valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --num-callers=50 --log-file="$LOGS/memcheck.%p" \
    "$VENV/bin/python" "$VENV/bin/pytest" -p no:cacheprovider -q "${VALGRIND_TESTS[@]}" "$@"
rc=$?
set -e

# The extension's frames: its source files (debug info), or its .so.
ours=$(cd src && ls -- *.c | sed 's/[.]/[.]/g' | paste -sd'|')
status=0
for log in "$LOGS"/memcheck.*; do
    # A subprocess the tests start is under valgrind from its fork to its
    # exec only: its log ends there, without a summary.
    grep -q "ERROR SUMMARY" "$log" || continue
    # One memcheck record per paragraph, once the "==pid== " prefix is gone.
    sed -E 's/^==[0-9]+== ?//' "$log" | awk -v ours="[(](${ours}):|_backgrounder[.]cpython" '
        function flush() {
            if (n && head ~ /^(Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|.* definitely lost in loss record)/) {
                if (mine) { bad++; print "=== in the extension:"; for (i = 1; i <= n; i++) print rec[i] }
                else { other[head]++ }
            }
            n = 0; mine = 0; head = ""
        }
        /^$/ { flush(); next }
        {
            rec[++n] = $0
            if (n == 1) { head = $0; leak = head ~ /definitely lost/; python = 0 }
            # An error is ours if a frame of ours comes before any Python
            # code (which the extension may have called); a leak is ours if
            # the extension is anywhere in the stack that allocated it.
            if (!leak && $0 ~ /_PyEval_EvalFrameDefault/) python = 1
            if ($0 ~ ours && (leak || !python)) mine = 1
        }
        END {
            flush()
            for (h in other) printf "(CPython alone, not failed on) %d x %s\n", other[h], h
            exit (bad > 0)
        }' || status=1
    grep -E "definitely lost:|ERROR SUMMARY" "$log" | sed "s|^|$(basename "$log"): |"
done

if [ "$rc" != 0 ]; then
    echo "the tests failed under valgrind" >&2
    status=1
fi
if [ "$status" != 0 ]; then
    echo "memcheck found errors or leaks in the extension" >&2
fi
exit "$status"
