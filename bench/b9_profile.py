"""Where B9's cost goes: per-request counts for one server under wrk.

    python bench/b9_profile.py [--systems nobg,bgtask,task] [--work io]
                               [--seconds 5] [--modes probes,syscalls,callgrind]
                               [--switch-interval S] [--json PATH]

Each mode starts the B9 server (bench/b9_app.py) for each system, warms it
up, drives it with wrk while one tool watches, and divides what the tool saw
by the requests the server handled meanwhile (its /count route, read before
and after):

probes     uprobes (perf probe, root) on CPython's take_gil (entry and
           return) and drop_gil, and on _asyncio's future_init, task_step and
           task_wakeup. Per request, for the loop thread (the server's main
           thread) and for every other thread together: GIL acquisitions,
           time spent waiting in take_gil and holding the GIL (from
           take_gil's return to the next drop_gil), waits longer than 1 ms (a thread
           that wanted the GIL while another held it: it waits up to the
           switch interval, then forces a drop); futures created, task steps
           and wake-ups by a future. The probes are removed afterwards.
syscalls   perf trace -s: system calls per request by thread (loop / others).
counters   perf stat --per-thread: instructions and cycles (user, kernel) per
           request by thread, and the loop's instructions per cycle.
callgrind  the server under valgrind --tool=callgrind --separate-threads=yes,
           instrumentation switched on after the warm-up: instructions per
           request on the loop thread and on the others. valgrind runs one
           thread at a time, so the GIL waits there mean nothing; the
           instruction counts do. wrk uses 8 connections in this mode.

Also, in every mode, the server's garbage collections per generation and
the time they took (gc.callbacks), and the engine's stats() deltas (loop wake-ups, completions) where the
server has backgrounder. Needs root (perf probe), perf, valgrind, wrk.
--gc-threshold N and --gc-freeze change the server's garbage collector, to
measure its share; B9_GC_SAVEALL=1 in a server's environment makes /count
list what the collector freed, by type (cyclic garbage per request).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import b9  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def libpython(python):
    out = subprocess.run([python, "-c", "import sysconfig, os; print(os.path.join("
                          "sysconfig.get_config_var('LIBDIR'), "
                          "sysconfig.get_config_var('INSTSONAME')))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out if os.path.exists(out) else None


def asyncio_so(python):
    return subprocess.run([python, "-c", "import _asyncio; print(_asyncio.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def deltas(before, after):
    out = {"handled": after["handled"] - before["handled"],
           "ran": after["ran"] - before["ran"]}
    if "gc_collections" in after:
        out["gc"] = {f"gen{g}": after["gc_collections"][g] - before["gc_collections"][g]
                     for g in range(3)}
        out["gc"]["seconds"] = after["gc_seconds"] - before["gc_seconds"]
    if "stats" in after and "stats" in before:
        out["stats"] = {k: after["stats"][k] - before["stats"].get(k, 0)
                        for k in ("wakeups", "completions", "submitted")
                        if k in after["stats"]}
    return out


def watched(server, seconds, tool_cmd, connections=b9.CONNECTIONS):
    """Warm-up, then the tool and wrk together; returns (count deltas, wrk)."""
    server.wait_ready(timeout=600)
    b9.wrk(server.port, b9.WARM_SECONDS, connections)
    before = server.count()
    tool = subprocess.Popen(tool_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) if tool_cmd else None
    time.sleep(1.0)  # perf attaches
    try:
        res = b9.wrk(server.port, seconds, connections)
        after = server.count()
    finally:
        if tool is not None:
            tool.send_signal(signal.SIGINT)
            try:
                _, err = tool.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                tool.kill()
                _, err = tool.communicate()
            if tool.returncode not in (0, -signal.SIGINT, 130):
                log(f"warning: {tool_cmd[0]} exited {tool.returncode}: {err[-400:]}")
    return deltas(before, after), res


# --------------------------------------------------------------------------
# probes

PROBES = (("lib", "take_gil"), ("lib", "take_gil%return"), ("lib", "drop_gil"),
          ("aio", "future_init"), ("aio", "task_step"), ("aio", "task_wakeup"))
LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+(\S+?):(\S+?):")


def add_probes(python):
    lib, aio = libpython(python), asyncio_so(python)
    if lib is None:
        raise SystemExit("probes: this Python has no shared libpython")
    events = []
    for where, fn in PROBES:
        path = lib if where == "lib" else aio
        res = subprocess.run(["perf", "probe", "-x", path, "--add", fn],
                             capture_output=True, text=True)
        m = re.search(r"Added new events?:\s*\n\s*(\S+)", res.stderr)
        if res.returncode or not m:
            raise RuntimeError(f"perf probe {fn}: {res.stderr.strip()[-300:]}")
        events.append(m.group(1))
    return events


def del_probes(events):
    for ev in events:
        subprocess.run(["perf", "probe", "--del", ev], capture_output=True)


def profile_probes(python, system, work, seconds, events, env):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        with b9.Server(python, system, work, env) as server:
            cmd = ["perf", "record", "-q", "-o", data, "-p", str(server.pid)]
            for ev in events:
                cmd += ["-e", ev]
            d, res = watched(server, seconds, cmd)
            server.stop()
            pid = server.pid
        script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event"],
                                capture_output=True, text=True)
    counts = collections.Counter()
    waits = {"loop": [], "others": []}
    holds = {"loop": [], "others": []}
    entered, taken = {}, {}
    for line in script.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        tid, t, name = int(m.group(1)), float(m.group(2)), m.group(4)
        who = "loop" if tid == pid else "others"
        if name.startswith("take_gil__return"):
            if tid in entered:
                waits[who].append(t - entered.pop(tid))
            taken[tid] = t
            continue
        if name == "take_gil":
            entered[tid] = t
        elif name == "drop_gil" and tid in taken:
            holds[who].append(t - taken.pop(tid))
        counts[(who, name)] += 1
    n = max(d["handled"], 1)
    out = {"system": system, "work": work, "handled": d["handled"], "rps_under_probes":
           res["requests"] / (res["duration_us"] / 1e6)}
    for who in ("loop", "others"):
        for name in ("take_gil", "drop_gil", "future_init", "task_step", "task_wakeup"):
            out[f"{who}.{name}/req"] = counts[(who, name)] / n
        w = waits[who]
        out[f"{who}.gil_wait_us/req"] = sum(w) * 1e6 / n
        out[f"{who}.gil_waits>1ms/req"] = sum(1 for x in w if x > 1e-3) / n
        out[f"{who}.gil_wait_max_ms"] = max(w) * 1e3 if w else 0.0
        h = holds[who]
        out[f"{who}.gil_hold_us/req"] = sum(h) * 1e6 / n
        out[f"{who}.gil_holds>1ms/req"] = sum(1 for x in h if x > 1e-3) / n
        out[f"{who}.gil_hold_max_ms"] = max(h) * 1e3 if h else 0.0
    out["stats/req"] = {k: v / n for k, v in d.get("stats", {}).items()}
    return out


# --------------------------------------------------------------------------
# syscalls

TRACE_HEAD = re.compile(r"^\s*(.+?) \((\d+)\), (\d+) events")
TRACE_ROW = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+([\d.]+)")


def profile_syscalls(python, system, work, seconds, env):
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "trace.txt")
        with b9.Server(python, system, work, env) as server:
            cmd = ["perf", "trace", "-s", "-o", out_file, "-p", str(server.pid)]
            d, res = watched(server, seconds, cmd)
            server.stop()
            pid = server.pid
        with open(out_file) as fh:
            text = fh.read()
    per = collections.Counter()
    who = None
    for line in text.splitlines():
        m = TRACE_HEAD.match(line)
        if m:
            who = "loop" if int(m.group(2)) == pid else "others"
            continue
        m = TRACE_ROW.match(line)
        if m and who:
            per[(who, m.group(1))] += int(m.group(2))
    n = max(d["handled"], 1)
    out = {"system": system, "work": work, "handled": d["handled"],
           "rps_under_trace": res["requests"] / (res["duration_us"] / 1e6)}
    for who in ("loop", "others"):
        total = sum(v for (w, _), v in per.items() if w == who)
        out[f"{who}.syscalls/req"] = total / n
        out[f"{who}.top"] = {k: round(v / n, 3) for (w, k), v in
                             sorted(per.items(), key=lambda kv: -kv[1]) if w == who
                             and v / n >= 0.05}
    out["stats/req"] = {k: v / n for k, v in d.get("stats", {}).items()}
    return out


# --------------------------------------------------------------------------
# counters

COUNTERS = ("instructions:u", "cycles:u", "instructions:k", "cycles:k")


def profile_counters(python, system, work, seconds, env):
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "stat.csv")
        with b9.Server(python, system, work, env) as server:
            cmd = ["perf", "stat", "--per-thread", "-x,", "-o", out_file,
                   "-e", ",".join(COUNTERS), "-p", str(server.pid)]
            d, res = watched(server, seconds, cmd)
            server.stop()
            pid = server.pid
        with open(out_file) as fh:
            text = fh.read()
    per = collections.Counter()
    for line in text.splitlines():
        parts = line.split(",")
        # comm-tid,value,unit,event,...
        if len(parts) < 4 or "-" not in parts[0] or not parts[1].isdigit():
            continue
        tid = int(parts[0].rsplit("-", 1)[1])
        per[("loop" if tid == pid else "others", parts[3])] += int(parts[1])
    n = max(d["handled"], 1)
    out = {"system": system, "work": work, "handled": d["handled"],
           "rps_under_stat": res["requests"] / (res["duration_us"] / 1e6)}
    for who in ("loop", "others"):
        for ev in COUNTERS:
            out[f"{who}.{ev}/req"] = per[(who, ev)] / n
        cyc = per[(who, "cycles:u")]
        out[f"{who}.ipc_user"] = per[(who, "instructions:u")] / cyc if cyc else 0.0
    out["stats/req"] = {k: v / n for k, v in d.get("stats", {}).items()}
    if "gc" in d:
        out["gc/req"] = {k: v / n * (1e6 if k == "seconds" else 1)
                         for k, v in d["gc"].items()}  # seconds -> us per request
    return out


# --------------------------------------------------------------------------
# callgrind

def profile_callgrind(python, system, work, seconds, env, keep=None):
    with tempfile.TemporaryDirectory() as tmp:
        prefix = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                  "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.out"]
        with b9.Server(python, system, work, env, prefix=prefix) as server:
            server.wait_ready(timeout=600)
            b9.wrk(server.port, b9.WARM_SECONDS, 8)
            before = server.count()
            subprocess.run(["callgrind_control", "-i", "on", str(server.pid)],
                           capture_output=True, check=True)
            res = b9.wrk(server.port, seconds, 8)
            after = server.count()
            subprocess.run(["callgrind_control", "-i", "off", str(server.pid)],
                           capture_output=True, check=True)
            server.stop(timeout=300)
        if keep:
            os.makedirs(keep, exist_ok=True)
            for path in glob.glob(f"{tmp}/cg.out*"):
                shutil.copy(path, os.path.join(keep, f"{system}-{work}-" + os.path.basename(path)))
        totals = {}
        for path in sorted(glob.glob(f"{tmp}/cg.out*")):
            thread = int(re.search(r"-(\d+)$", path).group(1)) if re.search(
                r"-(\d+)$", path) else 1
            with open(path) as fh:
                for line in fh:
                    if line.startswith("totals:"):
                        totals[thread] = totals.get(thread, 0) + int(line.split()[1])
                        break
    d = deltas(before, after)
    n = max(d["handled"], 1)
    loop = totals.get(1, 0)
    others = sum(v for k, v in totals.items() if k != 1)
    return {"system": system, "work": work, "handled": d["handled"],
            "rps_under_valgrind": res["requests"] / (res["duration_us"] / 1e6),
            "loop.Ir/req": loop / n, "others.Ir/req": others / n,
            "threads": len(totals), "stats/req": {k: v / n for k, v in
                                                  d.get("stats", {}).items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="nobg,bgtask,task",
                    help="B9's systems, and yield0: a background that yields to the "
                         "loop once and runs the work inline (no thread)")
    ap.add_argument("--work", default="io")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="probes,syscalls")
    ap.add_argument("--switch-interval", type=float,
                    help="sys.setswitchinterval in the server (default: Python's 5 ms)")
    ap.add_argument("--gc-threshold", type=int,
                    help="gc.set_threshold(N) in the server (default: Python's 700)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() in the server once the app is built")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--original-venv", metavar="DIR")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--keep", metavar="DIR", help="callgrind: keep the output files here "
                    "(SYSTEM-WORK-cg.out-NN; thread 01 is the loop) for callgrind_annotate")
    args = ap.parse_args(argv)
    for tool in ("wrk", "perf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH")
    systems = b9.parse_list(args.systems, b9.SYSTEMS + ("yield0",), "systems")
    works = b9.parse_list(args.work, b9.WORKS, "work")
    modes = args.modes.split(",")
    env = {"B9_GC_STATS": "1"}
    if args.gc_freeze:
        env["B9_GC_FREEZE"] = "1"
    if args.gc_threshold:
        env["B9_GC_THRESHOLD"] = str(args.gc_threshold)
    if args.switch_interval:
        env["B9_SWITCH_INTERVAL"] = str(args.switch_interval)
    pythons = {s: args.python for s in systems}
    if "original" in systems:
        venv = args.original_venv or os.path.join(
            b9.ROOT, ".bench", f"venv-0.2.0-py{sysconfig.get_python_version()}")
        pythons["original"] = b9.ensure_original_server(venv, args.python)
    results = []
    events = []
    try:
        if "probes" in modes:
            events = add_probes(args.python)
        for mode in modes:
            for work in works:
                for system in systems:
                    py = pythons[system]
                    if mode == "probes":
                        r = profile_probes(py, system, work, args.seconds, events, env)
                    elif mode == "syscalls":
                        r = profile_syscalls(py, system, work, args.seconds, env)
                    elif mode == "counters":
                        r = profile_counters(py, system, work, args.seconds, env)
                    elif mode == "callgrind":
                        r = profile_callgrind(py, system, work, args.seconds, env, args.keep)
                    else:
                        raise SystemExit(f"unknown mode {mode!r}")
                    r["mode"] = mode
                    results.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        del_probes(events)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"argv": sys.argv[1:], "loadavg": os.getloadavg(),
                       "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
