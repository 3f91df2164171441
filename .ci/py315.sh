#!/usr/bin/env bash
# Python 3.14 and 3.15, and a debug CPython, in a Debian sid chroot.
#
#   bash .ci/py315.sh            (as root: debootstrap, chroot and mount need it)
#
# Debian 12 has neither Python, and pyenv builds would not be Debian's: so a
# minimal Debian sid is bootstrapped into a fresh directory under /tmp
# (debootstrap, ~2-5 minutes), with python3.14-dev, python3.15-dev and
# python3.14-dbg from Debian's own packages.  Nothing is cached: the chroot is
# built at every run and removed at the end (trap).  In it:
#
# 1. On 3.14 and on 3.15: backgrounder is built with warnings as errors
#    (BACKGROUNDER_WERROR=1) and the whole suite runs, typing checks
#    included, with PYTHONWARNINGS=error, i.e. `-W error` for pytest and for
#    every interpreter the tests start (exit, fork and leak tests run in
#    subprocesses): what a user whose own suite runs with -W error sees.
#    pytest's filterwarnings=error (pyproject.toml) applies on top.  Every
#    pinned test dependency installs on 3.14 and 3.15 (uvloop, pyright, mypy,
#    the frameworks, Django 6): nothing is deselected.
# 2. Under python3.14-dbg -X dev (a debug CPython: assertions on reference
#    counts and GC invariants at every operation, plus dev mode's checks),
#    with backgrounder built in its debug flavour (BACKGROUNDER_DEBUG=1:
#    -O0, assertions and invariant checks on): the core tests, and
#    tests/test_refleaks.py, which repeats every public operation and fails
#    if sys.gettotalrefcount() grows.  The run fails if the refleak tests
#    did not run (they skip outside a debug build).
#
# Time-bounded: each step under `timeout`.  Measured on 2 cores: 11m40s in
# all (debootstrap 1m45s, each full suite with its install 2m45s, the debug
# run 4m); debootstrap took 5 minutes and the whole ~27 when the machine was
# shared with other heavy jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[ "$(id -u)" = 0 ] || { echo "py315.sh needs root (debootstrap, chroot, mount)" >&2; exit 1; }

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CORE_TESTS=(tests/test_task.py tests/test_tasks.py tests/test_background.py tests/test_lifecycle.py
            tests/test_config.py tests/test_refleaks.py)

WORK=$(mktemp -d /tmp/backgrounder-py315.XXXXXX)
CHROOT=$WORK/sid
cleanup() {
    local rc=$?
    if mountpoint -q "$CHROOT/proc" 2>/dev/null; then
        umount "$CHROOT/proc" || umount -l "$CHROOT/proc" || true
    fi
    # Removed only once nothing is mounted under it; --one-file-system as a
    # second guard against deleting through a mount.
    if ! grep -q " $WORK/" /proc/mounts; then
        rm -rf --one-file-system "$WORK"
    else
        echo "py315.sh: $WORK still has mounts, left in place" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
say() { printf -- '--- %s (at %ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 600 apt-get install -y -qq -o DPkg::Lock::Timeout=300 debootstrap >/dev/null
fi

say "debootstrap Debian sid into $CHROOT"
packages=python3.14-dev,python3.15-dev,python3.14-dbg,python3.14-venv,python3.15-venv,gcc,libc6-dev,ca-certificates
if ! timeout 1200 debootstrap --variant=minbase --include="$packages" sid "$CHROOT" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    echo "debootstrap failed (log above)" >&2
    exit 1
fi
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
mount -t proc proc "$CHROOT/proc"

say "copying the source tree into the chroot"
mkdir "$CHROOT/src"
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude=./dist --exclude='./.venv*' \
    --exclude='*.egg-info' --exclude='*.so' --exclude='*.o' --exclude=__pycache__ \
    --exclude=./.bench --exclude=./site --exclude=./.hypothesis --exclude='./.*_cache' \
    -cf - . | tar -C "$CHROOT/src" -xf -

# The chroot's commands run, time-bounded, with a clean environment: none of this machine's
# pip settings (PIP_FIND_LINKS, local indexes in its pip.conf) get in, so pip
# inside uses PyPI.  apt there would need -o Acquire::Check-Valid-Until=false;
# nothing here calls it.
in_chroot() {
    local seconds=$1
    shift
    timeout "$seconds" chroot "$CHROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 CI=true TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 "$@"
}
in_chroot 60 python3.14 -VV
in_chroot 60 python3.15 -VV
in_chroot 60 python3.14-dbg -VV
in_chroot 60 python3.14-dbg -c 'import sys; assert hasattr(sys, "gettotalrefcount"), "python3.14-dbg is not a debug build"'

for v in 3.14 3.15; do
    say "Python $v: build with -Werror, the whole suite with -W error"
    # scripts/test.sh installs the pinned test dependencies and the package
    # built with BACKGROUNDER_WERROR=1; PYTHONWARNINGS is set for pytest only.
    in_chroot 600 bash -c "cd /src && PYTHON=python$v VENV=/venv-$v bash scripts/test.sh --version"
    in_chroot 1800 bash -c "cd /src && PYTHONWARNINGS=error /venv-$v/bin/pytest -p no:cacheprovider -q"
done

say "python3.14-dbg -X dev: debug build of backgrounder, the core tests and the refleak tests"
cat >"$CHROOT/run-dbg.sh" <<'EOF'
set -euo pipefail
cd /src
python3.14-dbg -m venv /venv-dbg
# The pins (with their environment markers) of what the core tests import.
grep -E '^(pytest|pytest-timeout|hypothesis|anyio|uvloop|trio)==' requirements/test.txt >/dbg-requirements.txt
/venv-dbg/bin/pip install --quiet -r /dbg-requirements.txt
BACKGROUNDER_DEBUG=1 BACKGROUNDER_WERROR=1 /venv-dbg/bin/pip install --quiet --no-deps .
# From / : in /src the source tree would shadow the installed package.
(cd / && /venv-dbg/bin/python -c 'import sys, backgrounder._backgrounder as m; assert hasattr(sys, "gettotalrefcount"); print(m.__file__)')
# -rs lists every skip: the refleak tests must not be among them.
PYTHONWARNINGS=error /venv-dbg/bin/python -X dev /venv-dbg/bin/pytest -p no:cacheprovider -q -rs \
    --junitxml=/dbg.xml "$@"
EOF
in_chroot 1800 bash /run-dbg.sh "${CORE_TESTS[@]}"
# The refleak tests ran, each of them, and none skipped.
python3 - "$CHROOT/dbg.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if c.get("classname", "").endswith("test_refleaks")]
ran = [c for c in cases if c.find("skipped") is None and c.find("failure") is None and c.find("error") is None]
print(f"refleak tests passed under the debug CPython: {len(ran)} of {len(cases)}")
if not cases or len(ran) != len(cases):
    sys.exit("the refleak tests did not all run and pass under python3.14-dbg")
EOF

say "done"
