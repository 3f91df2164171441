"""B9: a real server under load. Runs every system x work kind, prints a table.

    python bench/b9.py [--quick] [--json PATH] [--chart SVG]
                       [--systems nobg,task] [--work io,cpu]
                       [--python PATH] [--original-venv DIR | --no-original]

For each system and work kind: uvicorn (uvloop, httptools, one process)
starts serving bench/b9_app.py, wrk drives it over loopback (-t1, 64
connections) for a warm-up second and then for the measured time, the
server's /count route reports (once every background call has run) how many
requests it handled and how many background calls ran, and the server
stops. The systems are interleaved within a repeat and rotated from one
repeat to the next; the table shows medians. Needs wrk on PATH and
requirements/bench.txt installed. Exits 0 when everything ran, whatever the
figures; 1 if a server or wrk failed, a request failed, or background work
was lost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import run  # noqa: E402  (the 0.2.0 virtualenv and the interpreter probe)

APP = os.path.join(HERE, "b9_app.py")
LUA = os.path.join(HERE, "b9_report.lua")
BENCH_REQUIREMENTS = os.path.join(ROOT, "requirements", "bench.txt")
# what the 0.2.0 virtualenv needs on top of run.py's to serve B9
SERVER_PACKAGES = ("uvicorn", "uvloop", "httptools", "starlette")

SYSTEMS = ("nobg", "bgtask", "fastapi", "task", "tasks2", "decorator", "original")
LABELS = {
    "nobg": "no background",
    "bgtask": "starlette BackgroundTask",
    "fastapi": "fastapi BackgroundTasks",
    "task": "backgrounder Task",
    "tasks2": "backgrounder Tasks of two",
    "decorator": "backgrounder @background",
    "original": "backgrounder 0.2.0 Task",
    "yield0": "await sleep(0), work inline",
}
WORKS = ("io", "cpu")
WORK_LABELS = {"io": "io: sleep 1 ms, GIL released",
               "cpu": "cpu: 200 Python additions, GIL held"}
# BENCHMARKS.md, B9: backgrounder Task against no background and BackgroundTask
TARGET_VS_NOBG = {"io": 0.8, "cpu": 0.7}
TARGET_VS_BGTASK = 4.0
TARGET_P99_VS_NOBG = 2.0

CONNECTIONS = 64
WARM_SECONDS = 1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """uvicorn serving b9_app.py for one system and work kind, in python."""

    def __init__(self, python, system, work, env=None, prefix=()):
        self.port = free_port()
        self.errfile = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, **(env or {}), B9_SYSTEM=system, B9_WORK=work)
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([*prefix, python, APP, str(self.port)], cwd=HERE, env=env,
                                     stdout=self.errfile, stderr=self.errfile)

    @property
    def pid(self):
        return self.proc.pid

    def stderr_tail(self, lines=12):
        self.errfile.seek(0)
        return "\n".join(self.errfile.read().strip().splitlines()[-lines:])

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n"
                                   f"{self.stderr_tail()}")
            try:
                status, _ = http_get(self.port, "/", 2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout} s (last answer: "
                           f"{status}):\n{self.stderr_tail()}")

    def count(self):
        status, body = http_get(self.port, "/count", 120)
        if status != 200:
            raise RuntimeError(f"/count answered {status}: {body[:200]!r}")
        return json.loads(body)

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not stop within {timeout} s of SIGINT")
        self.errfile.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """{thread id: (user s, system s, voluntary, involuntary context switches)}
    of a process's threads, from /proc."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) / TICK, int(fields[12]) / TICK,
                         int(status["voluntary_ctxt_switches"]),
                         int(status["nonvoluntary_ctxt_switches"]))
    return out


def wrk(port, seconds, connections=CONNECTIONS, path="/"):
    """Runs wrk against the server; returns its JSON summary (b9_report.lua)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", LUA, f"http://127.0.0.1:{port}{path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if res.returncode != 0:
        raise RuntimeError(f"wrk exited {res.returncode}: {res.stderr.strip()[-500:]}")
    for line in res.stdout.splitlines():
        if line.startswith("B9JSON "):
            out = json.loads(line[len("B9JSON "):])
            out["text"] = res.stdout
            return out
    raise RuntimeError(f"wrk printed no summary:\n{res.stdout}{res.stderr}")


def measure(python, system, work, seconds):
    """One server: warm-up, measured wrk run, drained count. Returns a dict."""
    with Server(python, system, work) as server:
        try:
            server.wait_ready()
            warm = wrk(server.port, WARM_SECONDS)
            before = server.count()
            cpu0 = cpu_seconds(server.pid)
            timed = wrk(server.port, seconds)
            cpu1 = cpu_seconds(server.pid)
            count = server.count()
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{server.stderr_tail()}") from None
        server.stop()
    errors = {k: v for k, v in timed["errors"].items() if v}
    errors.update({f"warm-up {k}": v for k, v in warm["errors"].items() if v})
    answered = warm["requests"] + timed["requests"]
    problems = []
    if errors:
        problems.append(f"wrk errors {errors}")
    # wrk counts the responses it read; the server may have handled a few more
    # whose responses came after wrk stopped reading, never fewer.
    if count["handled"] < answered:
        problems.append(f"the server handled {count['handled']} requests, "
                        f"wrk got {answered} responses")
    lost = count["expected"] - count["ran"]
    if lost:
        problems.append(f"{lost} of {count['expected']} background calls never ran")
    seconds_measured = timed["duration_us"] / 1e6
    # CPU the server spent per request it handled during the timed run: a
    # figure that a loaded machine disturbs far less than req/s.
    n = max(count["handled"] - before["handled"], 1)
    zero = (0, 0, 0, 0)
    loop = [a - b for a, b in zip(cpu1.get(server.pid, zero), cpu0.get(server.pid, zero))]
    loop_cpu = loop[0] + loop[1]
    all_cpu = (sum(u + s for u, s, _, _ in cpu1.values())
               - sum(u + s for t, (u, s, _, _) in cpu0.items() if t in cpu1))
    return {
        "system": system, "work": work,
        "rps": timed["requests"] / seconds_measured,
        "p50_ms": timed["p50_us"] / 1000, "p90_ms": timed["p90_us"] / 1000,
        "p99_ms": timed["p99_us"] / 1000, "max_ms": timed["max_us"] / 1000,
        "requests": timed["requests"], "warm_requests": warm["requests"],
        "seconds": seconds_measured, "handled": count["handled"],
        "loop_cpu_us": loop_cpu * 1e6 / n, "all_cpu_us": all_cpu * 1e6 / n,
        "loop_user_us": loop[0] * 1e6 / n, "loop_sys_us": loop[1] * 1e6 / n,
        "loop_voluntary_switches": loop[2] / n, "loop_involuntary_switches": loop[3] / n,
        "expected": count["expected"], "ran": count["ran"], "lost": lost,
        "wrk_errors": errors, "stats": count.get("stats"),
        "backlog": count.get("backlog"), "drain_seconds": count.get("drain_seconds"),
        "backgrounder": count.get("backgrounder"), "problems": problems,
    }


def server_requirements():
    """The lines of requirements/bench.txt that the 0.2.0 server needs."""
    out = []
    with open(BENCH_REQUIREMENTS) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            name = line.split("=", 1)[0].split(";", 1)[0].strip().lower()
            if line and name in SERVER_PACKAGES:
                out.append(line)
    return out


def ensure_original_server(venv, base_python):
    """The 0.2.0 virtualenv of run.py, with uvicorn & co. added. Python or None."""
    py, _ = run.ensure_original(venv, base_python)
    if py is None:
        return None
    check = "import uvicorn, uvloop, httptools, starlette"
    if subprocess.run([py, "-c", check], cwd=HERE, capture_output=True).returncode:
        log(f"adding {', '.join(SERVER_PACKAGES)} to {venv} ...")
        res = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              *server_requirements()],
                             capture_output=True, text=True, timeout=600)
        if res.returncode:
            log(f"warning: could not install the server into {venv}: {res.stderr[-500:]}")
            return None
    return py


def medians(results):
    groups = {}
    for r in results:
        groups.setdefault((r["work"], r["system"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "loop_cpu_us": statistics.median(r["loop_cpu_us"] for r in rs),
            "all_cpu_us": statistics.median(r["all_cpu_us"] for r in rs),
            "ran": sum(r["ran"] for r in rs),
            "expected": sum(r["expected"] for r in rs),
            "lost": sum(r["lost"] for r in rs),
            "repeats": len(rs),
        }
    return out


def judge(med, work):
    """The B9 targets for backgrounder Task: [(text, met)]."""
    t, n, b = med.get((work, "task")), med.get((work, "nobg")), med.get((work, "bgtask"))
    if t is None:
        return []
    out = []
    if n:
        r = t["rps"] / n["rps"]
        out.append((f">= {TARGET_VS_NOBG[work]}x no background req/s (is {r:.2f}x)",
                    r >= TARGET_VS_NOBG[work]))
        r = t["p99_ms"] / n["p99_ms"]
        out.append((f"p99 <= {TARGET_P99_VS_NOBG:g}x no background's (is {r:.2f}x)",
                    r <= TARGET_P99_VS_NOBG))
    if b:
        r = t["rps"] / b["rps"]
        out.append((f">= {TARGET_VS_BGTASK:g}x BackgroundTask req/s (is {r:.2f}x)",
                    r >= TARGET_VS_BGTASK))
    out.append((f"0 background calls lost (is {t['lost']})", t["lost"] == 0))
    return out


def render(med, systems, works, heading):
    lines = [heading, ""]
    head = (f"{'work':<5} {'system':<26} {'req/s':>8} {'vs nobg':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'loop CPU':>8} {'all CPU':>7} {'bg calls ran':>17} {'lost':>4}")
    lines += [head, "-" * len(head)]
    for work in works:
        nobg = med.get((work, "nobg"))
        for system in systems:
            m = med.get((work, system))
            if m is None:
                continue
            ratio = f"{m['rps'] / nobg['rps']:.2f}x" if nobg else "-"
            ran = f"{m['ran']:,}/{m['expected']:,}" if m["expected"] else "-"
            lines.append(f"{work:<5} {LABELS[system]:<26} {m['rps']:>8,.0f} {ratio:>7} "
                         f"{m['p50_ms']:>7.1f} {m['p99_ms']:>7.1f} {m['loop_cpu_us']:>8.0f} "
                         f"{m['all_cpu_us']:>7.0f} {ran:>17} {m['lost']:>4}")
        for text, met in judge(med, work):
            lines.append(f"{'':<5} {'target (backgrounder Task)':<26} {text:<48} "
                         f"{'met' if met else 'NOT MET'}")
        lines.append("")
    lines.append("loop CPU, all CPU: the server's CPU time per request handled during the "
                 "timed run (µs; the loop thread, all threads)")
    return "\n".join(lines).rstrip() + "\n"


def parse_list(text, known, what, default=None):
    if not text:
        return list(default or known)
    items = [s for s in text.replace(" ", "").split(",") if s]
    bad = [s for s in items if s not in known]
    if bad:
        raise SystemExit(f"--{what}: unknown {', '.join(bad)}; known: {', '.join(known)}")
    return [s for s in known if s in items]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 repeat of 2 s per system and work (about 2 minutes)")
    ap.add_argument("--seconds", type=int, help="measured seconds per run (default 6, quick 2)")
    ap.add_argument("--repeats", type=int, help="repeats (default 2, quick 1)")
    ap.add_argument("--systems", help=f"a subset of {','.join(SYSTEMS)}, or yield0 (a control: "
                    "the response's background awaits asyncio.sleep(0), then runs the work inline)")
    ap.add_argument("--work", help="io, cpu or both (default)")
    ap.add_argument("--json", metavar="PATH", help="write every run's figures here")
    ap.add_argument("--chart", metavar="SVG", help="draw the chart (bench/b9_chart.py) here")
    ap.add_argument("--python", metavar="PATH", default=sys.executable,
                    help="interpreter with the current backgrounder and requirements/bench.txt")
    ap.add_argument("--original-venv", metavar="DIR",
                    help="virtualenv with backgrounder 0.2.0 (default: run.py's)")
    ap.add_argument("--no-original", action="store_true", help="leave 0.2.0 out")
    args = ap.parse_args(argv)

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    systems = parse_list(args.systems, SYSTEMS + ("yield0",), "systems", default=SYSTEMS)
    works = parse_list(args.work, WORKS, "work")
    seconds = args.seconds or (2 if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 2)
    started = time.perf_counter()

    info = run.describe(args.python)
    if not info.get("backgrounder") or info["backgrounder"] == "0.2.0":
        raise SystemExit(f"{args.python} has no current backgrounder: {info}")
    pythons = {s: args.python for s in systems}
    original_info = None
    if "original" in systems:
        if args.no_original:
            systems.remove("original")
        else:
            ver = info["python"].rsplit(".", 1)[0]
            venv = args.original_venv or os.path.join(ROOT, ".bench", f"venv-0.2.0-py{ver}")
            py = ensure_original_server(venv, args.python)
            if py is None:
                raise SystemExit("backgrounder 0.2.0: no virtualenv (see above); "
                                 "--no-original leaves it out")
            pythons["original"] = py
            original_info = run.describe(py)

    results, failures = [], []
    for r in range(repeats):
        for work in works:
            k = (r * 3) % len(systems)
            for system in systems[k:] + systems[:k]:
                try:
                    res = measure(pythons[system], system, work, seconds)
                except Exception as exc:  # a failed run is reported, the others go on
                    failures.append({"system": system, "work": work, "repeat": r,
                                     "error": str(exc)})
                    log(f"FAILED {work} {system} repeat {r + 1}: {exc}")
                    continue
                res["repeat"] = r
                results.append(res)
                for p in res["problems"]:
                    failures.append({"system": system, "work": work, "repeat": r,
                                     "error": p})
                    log(f"FAILED {work} {system} repeat {r + 1}: {p}")
                log(f"B9 {r + 1}/{repeats} {work:<3} {system:<10} {res['rps']:>8,.0f} req/s "
                    f"p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  "
                    f"ran {res['ran']:,}/{res['expected']:,}")

    med = medians(results)
    wall = time.perf_counter() - started
    heading = (f"B9: uvicorn (uvloop, httptools, 1 process), wrk -t1 -c{CONNECTIONS}, "
               f"{'--quick, ' if args.quick else ''}median of {repeats} x {seconds} s, "
               f"Python {info.get('python', '?')}, {os.cpu_count()} cores, {wall:.0f} s")
    print(render(med, systems, works, heading), end="")
    if failures:
        print(f"{len(failures)} failure(s); see stderr")

    doc = {
        "meta": {"argv": sys.argv[1:], "quick": args.quick, "repeats": repeats,
                 "seconds": seconds, "connections": CONNECTIONS, "wall_seconds": wall,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "machine": platform.platform(), "cpus": os.cpu_count(),
                 "loadavg": os.getloadavg(), "current": info, "original": original_info,
                 "systems": systems, "works": works, "labels": LABELS},
        "runs": results, "failures": failures,
        "medians": [dict(work=w, system=s, **m) for (w, s), m in med.items()],
        "targets": {w: [{"text": t, "met": m} for t, m in judge(med, w)] for w in works},
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    if args.chart:
        import b9_chart
        b9_chart.draw(doc, args.chart)
        log(f"chart: {args.chart}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
