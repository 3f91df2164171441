#!/usr/bin/env bash
# The C engine under the sanitizers, with the stock (uninstrumented) CPython.
#
#   bash .ci/sanitizers.sh [DIR]
#
# 1. ASan + UBSan: builds backgrounder with BACKGROUNDER_SANITIZE=address into
#    DIR/.venv-asan and runs the whole test suite (but the typing checks, which
#    do not load the engine).
# 2. TSan: builds BACKGROUNDER_SANITIZE=thread into DIR/.venv-tsan and runs the
#    tests of the pool and of the bridge (TSAN_TESTS below).
# Both builds have BACKGROUNDER_DEBUG=1 too (assertions, the pool's invariant
# checks, the debug counters test_leaks.py and test_soak.py check), and
# BACKGROUNDER_WERROR=1.  DIR defaults to the repository root.
#
# Exits non-zero if a test fails or if a sanitizer reports anything in any
# process of the run: reports go to files (log_path), so that one in a
# subprocess whose failure a test expects, or whose output it does not show,
# still fails the run.  SANITIZERS="address" or "thread" runs one of the two;
# extra arguments after DIR go to pytest.
#
# Running an instrumented extension in an interpreter that is not:
# - The sanitizer's runtime must be loaded before anything else (it replaces
#   malloc, pthread_create, ...): LD_PRELOAD of the compiler's own runtime,
#   `gcc -print-file-name=libasan.so` / `libtsan.so`, for the pytest process
#   and every subprocess the tests start (they inherit the environment).
# - PYTHONMALLOC=malloc: every Python object is then its own malloc() block,
#   which ASan checks (pymalloc's arenas would hide a use-after-free or an
#   overflow of a small object) and TSan tracks.
# - ASan's leak check is off (detect_leaks=0): at exit CPython keeps what
#   daemon threads, tracemalloc and third-party extensions hold, and a child
#   process that exits with work still running keeps its items; LSan reports
#   all of it.  Leaks are tested by tests/test_leaks.py and .ci/valgrind.sh.
# - TSan sees only the extension's memory accesses (CPython is not
#   instrumented) but every pthread call, the GIL's included; .ci/tsan.supp
#   holds the suppressions, each explained.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DIR=${1:-.}
shift || true
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
SANITIZERS=${SANITIZERS:-address thread}
# The pool and the bridge: awaited calls, Tasks, @background handles,
# configure(), and the soak and fault tests.
TSAN_TESTS=(tests/test_task.py tests/test_tasks.py tests/test_background.py tests/test_config.py
            tests/test_soak.py)

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/backgrounder-sanitizers.XXXXXX")
trap 'rm -rf "$LOGS"' EXIT

step() { printf '\n--- %s\n' "$*"; }

# pip, without the lines this machine's pip.conf adds for absent local indexes.
pip_install() {
    local venv=$1
    shift
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

# build VENV KIND: backgrounder built with BACKGROUNDER_SANITIZE=KIND, into VENV.
build() {
    local venv=$1 kind=$2 src so
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    pip_install "$venv" -r requirements/test.txt -r requirements/django.txt
    # From a copy of the tree: setuptools reuses the object files in build/
    # when they look newer than the sources, whatever switches built them.
    src=$(mktemp -d "${TMPDIR:-/tmp}/backgrounder-src.XXXXXX")
    tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude=./dist --exclude='./.venv*' \
        --exclude='*.egg-info' --exclude='*.so' --exclude='*.o' --exclude=__pycache__ \
        --exclude=./.bench --exclude=./site --exclude=./.hypothesis --exclude='./.*_cache' \
        --exclude="./${DIR#"$ROOT"/}" -cf - . | tar -C "$src" -xf -
    "$venv/bin/python" -m pip uninstall --quiet --yes backgrounder >/dev/null 2>&1 || true
    BACKGROUNDER_SANITIZE=$kind BACKGROUNDER_DEBUG=1 BACKGROUNDER_WERROR=1 CC=$CC \
        pip_install "$venv" --no-deps --no-cache-dir "$src"
    rm -rf "$src"
    # The extension must be the instrumented one (found without importing
    # it: that needs the runtime preloaded).
    so=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
    so=$(ls "$so"/backgrounder/_backgrounder*.so)
    if ! readelf -d "$so" | grep -q "lib${kind:0:1}san"; then
        echo "$so is not linked with the ${kind} sanitizer runtime" >&2
        return 1
    fi
}

# Prints every report under $LOGS with prefix $1; returns 1 if there is one.
# A file holding nothing but TSan's count of the suppressions that matched
# (print_suppressions=1) is not a report: it is printed as information.
check_reports() {
    local prefix=$1 found=0 f
    for f in "$LOGS/$prefix".*; do
        [ -e "$f" ] || continue
        if grep -qvE '^(ThreadSanitizer: Matched [0-9]+ suppressions .*|[0-9]+ [a-z_]+:.*|)$' "$f"; then
            found=1
            echo "=== sanitizer report: $f"
            cat "$f"
        else
            sed "s|^|$(basename "$f"): |" "$f"
        fi
    done
    return "$found"
}

status=0

if [[ " $SANITIZERS " == *" address "* ]]; then
    step "ASan + UBSan build, into $DIR/.venv-asan"
    build "$DIR/.venv-asan" address
    # With ASan preloaded, GCC's UBSan runtime runs as its plugin and ignores
    # UBSAN_OPTIONS=log_path (its reports would go to a stderr that pytest or
    # a test may be capturing).  Every interpreter of this virtualenv sets
    # UBSan's report path itself at startup, from BACKGROUNDER_UBSAN_LOG.
    site=$("$DIR/.venv-asan/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo 'import os; p = os.environ.get("BACKGROUNDER_UBSAN_LOG"); p and __import__("ctypes").CDLL("libubsan.so.1").__sanitizer_set_report_path(p.encode())' \
        > "$site/backgrounder_ubsan_log.pth"
    step "ASan + UBSan: the whole test suite"
    set +e
    LD_PRELOAD=$("$CC" -print-file-name=libasan.so) \
    PYTHONMALLOC=malloc \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:log_path=$LOGS/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" BACKGROUNDER_UBSAN_LOG="$LOGS/ubsan" \
        "$DIR/.venv-asan/bin/pytest" -p no:cacheprovider -q -m "not typing" "$@"
    rc=$?
    set -e
    check_reports asan || rc=1
    check_reports ubsan || rc=1
    [ "$rc" = 0 ] || { echo "ASan/UBSan run failed" >&2; status=1; }
fi

if [[ " $SANITIZERS " == *" thread "* ]]; then
    step "TSan build, into $DIR/.venv-tsan"
    build "$DIR/.venv-tsan" thread
    step "TSan: ${TSAN_TESTS[*]}"
    set +e
    LD_PRELOAD=$("$CC" -print-file-name=libtsan.so) \
    PYTHONMALLOC=malloc \
    TSAN_OPTIONS="suppressions=$ROOT/.ci/tsan.supp:print_suppressions=1:halt_on_error=0:second_deadlock_stack=1:log_path=$LOGS/tsan" \
        "$DIR/.venv-tsan/bin/pytest" -p no:cacheprovider -q "${TSAN_TESTS[@]}" "$@"
    rc=$?
    set -e
    check_reports tsan || rc=1
    [ "$rc" = 0 ] || { echo "TSan run failed" >&2; status=1; }
fi

exit "$status"
