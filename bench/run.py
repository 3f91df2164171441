"""Runs the benchmarks of BENCHMARKS.md and prints one table.

    python bench/run.py [--quick] [--only B1,B2] [--json PATH]
                        [--python PATH] [--original-venv DIR | --no-original]

Every system runs in a fresh interpreter per workload and repeat
(bench/worker.py), the systems interleaved within each repeat; the table
shows the median of the repeats. The current backgrounder runs in --python
(default: this interpreter), the peers in this interpreter, backgrounder
0.2.0 in its own virtualenv (made on first use, .bench/venv-0.2.0-pyX.Y).
Exits 0 when everything ran, whatever the figures; 1 if a worker crashed,
hung or produced results that do not check out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import spec  # noqa: E402
import table  # noqa: E402

WORKER = os.path.join(HERE, "worker.py")
ORIGINAL_REQUIREMENTS = ["backgrounder==0.2.0", "httpx", "starlette",
                         "sniffio"]  # 0.2.0 imports sniffio; anyio 4.x no longer pulls it in


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def probe(python, code):
    """Runs `python -c code` away from the source tree; returns stdout or None."""
    try:
        res = subprocess.run([python, "-c", code], cwd=HERE, capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if res.returncode != 0:
        return None, res.stderr.strip().splitlines()[-1:] or ["exit %d" % res.returncode]
    return res.stdout.strip(), None


PROBE = (
    "import json, platform, importlib.metadata as md\n"
    "out = {'python': platform.python_version(), 'packages': {}}\n"
    "for name in ('backgrounder', 'anyio', 'starlette', 'httpx', 'nest-asyncio'):\n"
    "    try: out['packages'][name] = md.version(name)\n"
    "    except md.PackageNotFoundError: pass\n"
    "try:\n"
    "    import backgrounder\n"
    "    out['backgrounder'] = getattr(backgrounder, '__version__', '?')\n"
    "    out['backgrounder_file'] = backgrounder.__file__\n"
    "except Exception as exc:\n"
    "    out['backgrounder_error'] = repr(exc)\n"
    "print(json.dumps(out))\n"
)


def describe(python):
    out, err = probe(python, PROBE)
    if out is None:
        return {"error": err}
    return json.loads(out.splitlines()[-1])


def ensure_original(venv, base_python):
    """Returns the python of a virtualenv holding backgrounder 0.2.0, or None."""
    py = os.path.join(venv, "bin", "python")
    info = describe(py) if os.path.exists(py) else None
    if info and info.get("backgrounder") == "0.2.0":
        return py, info
    log(f"making {venv} with {' '.join(ORIGINAL_REQUIREMENTS)} ...")
    try:
        subprocess.run([base_python, "-m", "venv", venv], check=True,
                       capture_output=True, text=True, timeout=300)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *ORIGINAL_REQUIREMENTS],
                       check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        log(f"warning: could not make the 0.2.0 virtualenv ({exc}) {detail[-500:]}")
        return None, None
    info = describe(py)
    if info.get("backgrounder") != "0.2.0":
        log(f"warning: {venv} does not import backgrounder 0.2.0: {info}")
        return None, None
    return py, info


def run_worker(python, system, wid, n, params, timeout):
    """Runs one worker; returns (result dict or None, error text or None)."""
    cmd = [python, WORKER, system, wid, str(n)]
    if params:
        cmd.append(json.dumps(params))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    wall = time.perf_counter() - t0
    result = None
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    error = None
    if hung:
        error = f"no exit within {timeout} s"
    elif proc.returncode != 0:
        error = f"exit {proc.returncode}"
    if error:
        tail = "\n".join(err.strip().splitlines()[-12:])
        error = f"{error}{' after printing its figure' if result else ''}\n{tail}"
    if result is not None:
        result["wall"] = wall
    return result, error


def parse_only(text):
    """'B1,b6' -> ['B1', 'B6a', 'B6b'] in the order of BENCHMARKS.md."""
    ids = [w.wid for w in spec.WORKLOADS]
    if not text:
        return ids
    chosen = set()
    for item in filter(None, text.replace(" ", "").upper().split(",")):
        matches = [i for i in ids if item in (i.upper(), i.upper()[:2])]
        if not matches:
            raise SystemExit(f"--only: unknown workload {item!r}; known: "
                             f"{', '.join(ids)} (B6 = B6a,B6b)")
        chosen.update(matches)
    return [i for i in ids if i in chosen]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer calls and 3 repeats (under a minute)")
    ap.add_argument("--only", metavar="B1,B2", help="run only these workloads (B6 = B6a,B6b)")
    ap.add_argument("--json", metavar="PATH", help="write every repeat's raw figures here")
    ap.add_argument("--repeats", type=int, help="repeats per workload (default 5, quick 3)")
    ap.add_argument("--python", metavar="PATH", default=sys.executable,
                    help="interpreter with the current backgrounder installed "
                         "(default: this one)")
    ap.add_argument("--original-venv", metavar="DIR",
                    help="virtualenv with backgrounder 0.2.0, made if missing "
                         "(default: .bench/venv-0.2.0-pyX.Y in the project)")
    ap.add_argument("--no-original", action="store_true",
                    help="leave backgrounder 0.2.0 out")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds one worker may take (default 300, quick 60)")
    args = ap.parse_args(argv)

    wids = parse_only(args.only)
    repeats = args.repeats or (3 if args.quick else 5)
    timeout = args.timeout or (60 if args.quick else 300)
    started = time.perf_counter()

    peers_info = describe(sys.executable)
    current_info = describe(args.python)
    interpreters = {"peer": sys.executable}
    warnings = []
    if current_info.get("backgrounder") and current_info["backgrounder"] != "0.2.0":
        interpreters["current"] = args.python
    else:
        why = current_info.get("backgrounder_error") or current_info.get("error") or (
            "it has backgrounder 0.2.0, not the current one")
        warnings.append(f"backgrounder (this) left out: {args.python}: {why}")
    original_info = None
    if not args.no_original:
        ver = (current_info.get("python") or platform.python_version()).rsplit(".", 1)[0]
        venv = args.original_venv or os.path.join(ROOT, ".bench", f"venv-0.2.0-py{ver}")
        base = args.python if "error" not in current_info else sys.executable
        py, original_info = ensure_original(venv, base)
        if py:
            interpreters["original"] = py
        else:
            warnings.append("backgrounder 0.2.0 left out: no virtualenv (see above)")
    for w in warnings:
        log("warning: " + w)

    def where(system):
        return spec.WHERE.get(system, "peer")

    runs, failures = [], []
    for wid in wids:
        w = spec.BY_ID[wid]
        n = w.n_quick if args.quick else w.n_full
        systems = [s for s in w.systems if where(s) in interpreters]
        if not systems:
            continue
        for r in range(repeats):
            k = r % len(systems)
            for system in systems[k:] + systems[:k]:
                python = interpreters[where(system)]
                result, error = run_worker(python, system, wid, n, w.params, timeout)
                if error:
                    failures.append({"workload": wid, "system": system, "repeat": r,
                                     "error": error})
                    log(f"FAILED {wid} {system} repeat {r + 1}: {error}")
                if result is not None:
                    result["repeat"] = r
                    runs.append(result)
                    log(f"{wid} {r + 1}/{repeats} {system:<16} "
                        f"{table.fmt_value(result['value'], result['unit'])} {result['unit']}"
                        f"  ({result['wall']:.2f} s)")

    medians = table.medians(runs)
    rows = table.build_rows(wids, medians)
    wall = time.perf_counter() - started
    heading = (f"backgrounder benchmarks: {'--quick, ' if args.quick else ''}median of "
               f"{repeats}, Python {current_info.get('python', '?')}, "
               f"{os.cpu_count()} cores, {wall:.0f} s")
    ns = {}
    for (wid, _), m in medians.items():
        ns.setdefault(wid, m["n"])
    ns = {wid: ns[wid] for wid in wids if wid in ns}
    print(table.render(rows, heading, ns))
    for w in warnings:
        print("note: " + w)
    if failures:
        print(f"{len(failures)} worker run(s) failed; see stderr")

    if args.json:
        doc = {
            "meta": {
                "argv": sys.argv[1:], "quick": args.quick, "repeats": repeats,
                "wall_seconds": wall, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": platform.platform(), "cpus": os.cpu_count(),
                "interpreters": interpreters,
                "peers": peers_info, "current": current_info, "original": original_info,
                "warnings": warnings,
            },
            "runs": runs,
            "failures": failures,
            "medians": {f"{k[0]} {k[1]}": v for k, v in medians.items()},
            "table": rows,
        }
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
