"""Runs one workload for one system in this (fresh) interpreter.

    python bench/worker.py SYSTEM WORKLOAD N

Prints one line of JSON: {"system", "workload", "n", "value", "unit",
"extra", "python", "versions"}. Exits non-zero with a traceback on stderr if
the workload fails or its results do not check out.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

EXIT_GRACE = 30  # seconds the interpreter may take to exit after the result


def versions(system):
    out = {}
    names = {"anyio": "anyio", "starlette": "starlette", "bgtask": "starlette",
             "nobg": "starlette", "original": "backgrounder",
             "backgrounder": "backgrounder"}
    mod = names.get(system)
    if mod and mod in sys.modules:
        m = sys.modules[mod]
        out[mod] = getattr(m, "__version__", "?")
        if system == "backgrounder":
            out["backgrounder_file"] = getattr(m, "__file__", "?")
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    system, wid, n = argv[0], argv[1], int(argv[2])
    params = json.loads(argv[3]) if len(argv) > 3 else {}
    if system in ("original", "backgrounder"):
        import backgrounder
        is_original = getattr(backgrounder, "__version__", None) == "0.2.0"
        if is_original != (system == "original"):
            raise SystemExit(
                f"system {system!r} imported backgrounder "
                f"{getattr(backgrounder, '__version__', '?')} from "
                f"{getattr(backgrounder, '__file__', '?')}: wrong interpreter")
    result = workloads.RUNNERS[wid](system, n, params)
    result.update(system=system, workload=wid, n=n,
                  python=platform.python_version(), versions=versions(system))
    print(json.dumps(result), flush=True)
    if system == "original":
        # 0.2.0 (nest_asyncio + anyio 4) can leave an anyio worker thread
        # waiting forever, which hangs the exit: the figure is out, leave.
        sys.stderr.flush()
        os._exit(0)
    # A hang at exit (pool drain, thread joins) is reported, not waited out.
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
