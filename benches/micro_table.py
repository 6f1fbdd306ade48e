#!/usr/bin/env python3
"""Markdown table of a benches/micro_compare.sh results dir.

usage: micro_table.py RESULTDIR

Reads every RESULTDIR/<program>.<run>.txt: lines `RESULT <runtime> <name> <value>`
(median ns/op of that run unless the name ends in a unit) and `MAXRSS_KB <kb>`
(from /usr/bin/time). The value columns are the median per (runtime, name)
across runs; the ratio columns, and the verdicts on weft's target (<= 0.8x
Tokio and faster than Go, lower is better, against whichever peers have the
benchmark), are the median of the run-by-run ratios (the programs of one run
shared the machine's state), as benches/io_table.py gives them.
"""
import collections
import glob
import os
import re
import statistics
import sys

TOKIO_RATIO = 0.8
# Row order: the peers' reference order; anything else follows as first seen.
ORDER = ["spawn_many(100000)", "yield_many(200x1000)", "ping_pong(1 pair x 10000)",
         "ping_pong(100 pairs x 1000)", "chained_spawn(1000x100)",
         "spawn_blocking_seq(10000)", "spawn_blocking_batch(10000)"]


def fmt(v):
    return "-" if v is None else f"{v:,.1f}"


def paired(vals, a, b, n):
    """Median over the runs that have both of a's value / b's, or None."""
    ra, rb = vals.get((a, n), {}), vals.get((b, n), {})
    r = [ra[k] / rb[k] for k in ra if k in rb and rb[k]]
    return statistics.median(r) if r else None


def ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def main(d):
    vals = collections.defaultdict(dict)  # (runtime, name) -> {run: value}
    rss = collections.defaultdict(list)   # program -> per-run peak RSS (KiB)
    failed, names = [], list(ORDER)
    files = sorted(glob.glob(os.path.join(d, "*.*.txt")))
    for f in files:
        prog, run, _ = os.path.basename(f).rsplit(".", 2)
        for line in open(f, errors="replace"):
            if m := re.match(r"RESULT (\S+) (.+) (\S+)\s*$", line):
                vals[(m[1], m[2])][run] = float(m[3])
                if m[2] not in names:
                    names.append(m[2])
            elif m := re.match(r"MAXRSS_KB (\d+)", line):
                rss[prog].append(int(m[1]))
            elif line.startswith(("Command exited with non-zero", "Command terminated by signal")):
                failed.append(f"{os.path.basename(f)}: {line.strip()}")
    med = {k: statistics.median(v.values()) for k, v in vals.items()}
    runtimes = ["weft", "tokio", "go"]
    runtimes += sorted({rt for rt, _ in med} - set(runtimes))  # unexpected extras
    names = [n for n in names if any((rt, n) in med for rt in runtimes)]

    meta = {}
    if os.path.exists(os.path.join(d, "meta.txt")):
        for line in open(os.path.join(d, "meta.txt")):
            k, _, v = line.partition(":")
            meta[k.strip()] = v.strip()
    print(f"_{meta.get('date', '?')}; `{meta.get('command', '?')}`; RUNS={meta.get('runs', '?')} "
          f"WORKERS={meta.get('workers', '?')} REPS={meta.get('reps', '?')}; "
          f"median across runs of each run's median, ns/op (lower is better); ratios: median "
          f"of the run-by-run ratios_\n")
    print("| benchmark | " + " | ".join(runtimes) +
          f" | weft/tokio | weft/go | target (<={TOKIO_RATIO}x tokio, < 1x go) | met? |")
    print("|---" * (len(runtimes) + 5) + "|")
    for n in names:
        rt_, rg = paired(vals, "weft", "tokio", n), paired(vals, "weft", "go", n)
        bounds = [(r, lim, strict) for r, lim, strict in ((rt_, TOKIO_RATIO, False), (rg, 1.0, True))
                  if r is not None]
        met = "-" if not bounds else (
            "yes" if all(r < lim if s else r <= lim for r, lim, s in bounds) else "**no**")
        target = " & ".join(("< " if s else "<= ") + f"{lim}x" for _, lim, s in bounds) or "-"
        cells = [fmt(med.get((rt, n))) for rt in runtimes]
        print(f"| {n} | " + " | ".join(cells) + f" | {ratio(rt_)} | {ratio(rg)} | {target} | {met} |")

    print()
    for prog in sorted(rss):
        v = rss[prog]
        print(f"- peak RSS {prog}: {statistics.median(v) / 1024:.1f} MiB median "
              f"(max {max(v) / 1024:.1f} MiB, {len(v)} run(s))")
    for f in failed:
        print(f"- FAILED {f}")
    if not files:
        print(f"- no <program>.<run>.txt files in {d}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
