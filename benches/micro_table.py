#!/usr/bin/env python3
"""Markdown table of a benches/micro_compare.sh results dir.

usage: micro_table.py RESULTDIR

Reads every RESULTDIR/<program>.<run>.txt: lines `RESULT <runtime> <name> <value>`
(median ns/op of that run unless the name ends in a unit) and `MAXRSS_KB <kb>`
(from /usr/bin/time). Takes the median per (runtime, name) across runs, so one
noisy run cannot move the result, and checks weft's target: <= 0.8x Tokio and
faster than Go (lower is better), against whichever peers have the benchmark.
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


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main(d):
    vals = collections.defaultdict(list)  # (runtime, name) -> per-run values
    rss = collections.defaultdict(list)   # program -> per-run peak RSS (KiB)
    failed, names = [], list(ORDER)
    files = sorted(glob.glob(os.path.join(d, "*.*.txt")))
    for f in files:
        prog = os.path.basename(f).rsplit(".", 2)[0]
        for line in open(f, errors="replace"):
            if m := re.match(r"RESULT (\S+) (.+) (\S+)\s*$", line):
                vals[(m[1], m[2])].append(float(m[3]))
                if m[2] not in names:
                    names.append(m[2])
            elif m := re.match(r"MAXRSS_KB (\d+)", line):
                rss[prog].append(int(m[1]))
            elif line.startswith(("Command exited with non-zero", "Command terminated by signal")):
                failed.append(f"{os.path.basename(f)}: {line.strip()}")
    med = {k: statistics.median(v) for k, v in vals.items()}
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
          f"median across runs of each run's median, ns/op (lower is better)_\n")
    print("| benchmark | " + " | ".join(runtimes) +
          f" | weft/tokio | weft/go | target (<={TOKIO_RATIO}x tokio, < go) | met? |")
    print("|---" * (len(runtimes) + 5) + "|")
    for n in names:
        w, t, g = (med.get((rt, n)) for rt in ("weft", "tokio", "go"))
        bounds = []  # (limit, strict) for the peers that have this benchmark
        if t is not None:
            bounds.append((TOKIO_RATIO * t, False))
        if g is not None:
            bounds.append((g, True))
        target = " & ".join(("< " if s else "<= ") + fmt(b) for b, s in bounds) or "-"
        met = "-" if w is None or not bounds else (
            "yes" if all(w < b if s else w <= b for b, s in bounds) else "**no**")
        cells = [fmt(med.get((rt, n))) for rt in runtimes]
        print(f"| {n} | " + " | ".join(cells) + f" | {ratio(w, t)} | {ratio(w, g)} | {target} | {met} |")

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
