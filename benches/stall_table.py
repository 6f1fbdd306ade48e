#!/usr/bin/env python3
"""Table of a benches/stall_compare.sh run (the CPU-stall benchmark).

usage: stall_table.py RESULTS_DIR

Reads the raw wrk --latency outputs stall_compare.sh left in RESULTS_DIR,
named <server>.<mode>.light.<run>.txt and <server>.<mode>.heavy.<run>.txt, and
the server CPU seconds per run, <server>.<mode>.<run>.cpu ("cpu_s=.. wall_s=..").
Prints one Markdown table, a row per server and mode (baseline, inline,
blocking, compute): /light p50, p90, p99 and req/s, /heavy req/s and p99, the server's
CPU (cores busy over the run), and "light p99 / baseline p99", the stall
factor, against the same server's baseline. Every figure is the median across
runs, taken per metric; the last column lists each run's /light p99 so the
spread is visible.
"""
import glob
import os
import re
import statistics
import sys

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}  # -> ms
MODES = ["baseline", "inline", "blocking", "compute"]
ORDER = ["tokio", "weft"]


def wrk(path):
    """{rps, p50, p90, p99 (ms), err} from one wrk --latency output, or None."""
    t = open(path, errors="replace").read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if not m:
        return None
    out = {"rps": float(m.group(1))}
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        out["p" + p] = float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")
    errs = []
    m = re.search(r"Socket errors: (.*)", t)
    if m:
        errs.append(m.group(1).strip())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    if m:
        errs.append(f"non-2xx {m.group(1)}")
    out["err"] = "; ".join(errs)
    return out


def cpu(path):
    """server cores busy over the run, from a .cpu file, or None."""
    try:
        kv = dict(x.split("=") for x in open(path).read().split())
        return float(kv["cpu_s"]) / float(kv["wall_s"])
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None


def load(d):
    """{(server, mode): {"light": [run dicts], "heavy": [...], "cores": [...]}}"""
    data = {}
    for f in sorted(glob.glob(os.path.join(d, "*.*.*.*.txt"))):
        m = re.match(r"(.+)\.(\w+)\.(light|heavy)\.(\d+)\.txt$", os.path.basename(f))
        if not m:
            continue
        server, mode, kind, run = m.groups()
        v = wrk(f)
        e = data.setdefault((server, mode), {"light": {}, "heavy": {}, "cores": {}})
        if v:
            e[kind][int(run)] = v
        c = cpu(os.path.join(d, f"{server}.{mode}.{run}.cpu"))
        if c is not None:
            e["cores"][int(run)] = c
    return data


def med(runs, k):
    vals = [r[k] for r in runs.values() if r[k] == r[k]]  # drop NaN
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    return "-" if v is None else f"{v:,.{digits}f}"


def main(d):
    data = load(d)
    if not data:
        sys.exit(f"no wrk outputs in {d}")
    meta = os.path.join(d, "meta.txt")
    lines = open(meta).read().splitlines() if os.path.exists(meta) else []
    settings = next((l for l in lines if l.startswith("RUNS=")), "")
    heavy = re.search(r"HEAVY_CONNS=(\d+)", settings)
    heavy_ms = re.search(r"HEAVY_MS=([\d.]+)", settings)
    print(f"### CPU stall: /light (wrk -t1 -c16) while /heavy (wrk -t1 -c{heavy.group(1) if heavy else '?'}, "
          f"{heavy_ms.group(1) if heavy_ms else '?'} ms CPU each), 2 workers\n")
    if lines:
        print(f"_{', '.join(lines[:2])}_\n")
    print("| server | mode | light p50 (ms) | light p90 (ms) | light p99 (ms) | light req/s | heavy req/s "
          "| heavy p99 (ms) | light p99 / baseline p99 | server CPU (cores) | light p99 per run (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    servers = [s for s in ORDER if any(k[0] == s for k in data)] + sorted({k[0] for k in data} - set(ORDER))
    notes = []
    for s in servers:
        base = data.get((s, "baseline"), {}).get("light")
        base_p99 = med(base, "p99") if base else None
        for mode in MODES + sorted({k[1] for k in data if k[0] == s} - set(MODES)):
            e = data.get((s, mode))
            if not e or not e["light"]:
                continue
            li, hv = e["light"], e["heavy"]
            p99 = med(li, "p99")
            ratio = p99 / base_p99 if p99 is not None and base_p99 else None
            cores = statistics.median(e["cores"].values()) if e["cores"] else None
            per_run = ", ".join(fmt(li[r]["p99"]) for r in sorted(li))
            print(f"| {s} | {mode} | {fmt(med(li, 'p50'))} | {fmt(med(li, 'p90'))} | {fmt(p99)} "
                  f"| {fmt(med(li, 'rps'), 0)} | {fmt(med(hv, 'rps'), 0) if hv else '-'} "
                  f"| {fmt(med(hv, 'p99')) if hv else '-'} | {fmt(ratio) + 'x' if ratio else '-'} "
                  f"| {fmt(cores)} | {per_run} |")
            for kind, runs in (("light", li), ("heavy", hv)):
                for r in sorted(runs):
                    if runs[r]["err"]:
                        notes.append(f"{s} {mode} {kind} run {r}: {runs[r]['err']}")
    if notes:
        print("\nwrk errors:\n")
        for n in notes:
            print(f"- {n}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    main(sys.argv[1])
