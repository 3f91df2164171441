"""Medians of the repeats, the judgement against the targets, the table."""

from __future__ import annotations

import statistics

import spec


def medians(runs):
    """{(workload, system): {"value", "unit", "repeats", "extra": {key: median}}}."""
    grouped = {}
    for r in runs:
        grouped.setdefault((r["workload"], r["system"]), []).append(r)
    out = {}
    for key, rs in grouped.items():
        extra = {}
        for name in rs[0].get("extra", {}):
            vals = [x["extra"].get(name) for x in rs]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if vals:
                extra[name] = statistics.median(vals)
        out[key] = {"value": statistics.median(r["value"] for r in rs),
                    "unit": rs[0]["unit"], "n": rs[0]["n"], "repeats": len(rs),
                    "extra": extra}
    return out


def fmt_value(v, unit):
    if v is None:
        return "n/a"
    if unit in ("calls/s", "req/s", "ns/call", "B/Task", "B/await"):
        return f"{v:,.0f}"
    if unit == "us/call":
        return f"{v:,.1f}"
    if unit == "MB":
        return f"{v:+.1f}"
    if unit == "x":
        return f"{v:.3f}"
    return f"{v:.3g}"


def fmt_ratio(r):
    if r is None:
        return "n/a"
    return f"{r:.2f}x" if r < 100 else f"{r:,.0f}x"


def judge(op, value, bound):
    if value is None:
        return "not measured"
    return "met" if (value >= bound if op == ">=" else value <= bound) else "NOT MET"


def build_rows(wids, med):
    """Rows of dicts: workload, system, figure, ratio, target, met."""
    rows = []
    for wid in wids:
        w = spec.BY_ID[wid]
        ref = med.get((wid, w.ref))
        if wid == "B7":
            rows += b7_rows(w, med.get((wid, "backgrounder")))
            continue
        for system in w.systems:
            m = med.get((wid, system))
            value = m["value"] if m else None
            row = {"workload": wid, "system": spec.LABELS[system],
                   "figure": (f"{fmt_value(value, w.unit)} {w.unit}" if m else "n/a"),
                   "ratio": "", "target": "", "met": ""}
            if system == w.ref:
                row["ratio"] = "ref" if m else "n/a"
            elif m and ref:
                row["ratio"] = fmt_ratio(value / ref["value"])
            elif m:
                row["ratio"] = "n/a"
            rows.append(row)
            if system != "backgrounder":
                continue
            for i, t in enumerate(w.targets):
                other = med.get((wid, t.ref))
                ratio = value / other["value"] if (m and other) else None
                text = f"{t.op} {t.factor:g}x {spec.SHORT[t.ref]}"
                if ratio is not None:
                    text += f" (is {fmt_ratio(ratio)})"
                target_row = row if i == 0 else {
                    "workload": "", "system": "", "figure": "", "ratio": ""}
                target_row["target"] = text
                target_row["met"] = judge(t.op, ratio, t.factor)
                if i:
                    rows.append(target_row)
            if wid == "B1":
                wpc = m["extra"].get("wakeups_per_call") if m else None
                rows.append({"workload": wid, "system": "backgrounder wake-ups/call",
                             "figure": "n/a" if wpc is None else f"{wpc:.4f}",
                             "ratio": "",
                             "target": f"well under 1 (<= {spec.WAKEUPS_TARGET:g})",
                             "met": judge("<=", wpc, spec.WAKEUPS_TARGET)})
    return rows


def b7_rows(w, m):
    """Two rows: per-call cost at N over at 10,000 calls; RSS growth."""
    (op1, bound1, text1), (op2, bound2, text2) = w.absolute
    small = w.params.get("small", 10_000)
    e = m["extra"] if m else {}
    rss = e.get("rss_growth_mb")
    rows = [
        {"workload": w.wid, "system": "backgrounder cost/call ratio",
         "figure": f"{m['value']:.3f}x" if m else "n/a", "ratio": "",
         "target": text1, "met": judge(op1, m["value"] if m else None, bound1)},
        {"workload": w.wid, "system": "backgrounder RSS growth",
         "figure": "n/a" if rss is None else f"{rss:+.1f} MB", "ratio": "",
         "target": text2, "met": judge(op2, rss, bound2)},
    ]
    if m:
        rows[0]["note"] = (
            f"B7: {e.get('us_per_call_small', 0):.2f} us/call at {small:,} calls, "
            f"{e.get('us_per_call_large', 0):.2f} us/call at {m['n']:,}; RSS "
            f"{e.get('rss_before_mb', 0):.1f} MB before, {e.get('rss_after_mb', 0):.1f} MB after")
    return rows


COLUMNS = (("workload", "workload"), ("system", "system"), ("figure", "figure"),
           ("ratio", "vs ref"), ("target", "target (BENCHMARKS.md)"), ("met", "met"))


def render(rows, heading, ns=None):
    ns = ns or {}
    widths = {k: max([len(h)] + [len(str(r.get(k, ""))) for r in rows])
              for k, h in COLUMNS}
    right = {"figure", "ratio"}

    def line(cells):
        parts = []
        for k, _ in COLUMNS:
            cell = str(cells.get(k, ""))
            parts.append(cell.rjust(widths[k]) if k in right else cell.ljust(widths[k]))
        return "  ".join(parts).rstrip()

    out = [heading, line(dict((k, h) for k, h in COLUMNS)),
           "  ".join("-" * widths[k] for k, _ in COLUMNS)]
    last = None
    for r in rows:
        if r["workload"] and last and r["workload"] != last:
            out.append("")
        if r["workload"]:
            last = r["workload"]
        out.append(line(r))
    out.append("")
    out.append("vs ref: the figure divided by that of the row marked ref in its "
               "workload (for us, ns and B lower is better).")
    out += [r["note"] for r in rows if r.get("note")]
    sizes = [f"{wid} {n:,}" for wid, n in ns.items()]
    if sizes:
        out.append("calls (B5 requests, B6a Tasks, B6b awaits, B7 the large count): "
                   + ", ".join(sizes))
    return "\n".join(out)
