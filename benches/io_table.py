#!/usr/bin/env python3
"""Ratio table of a benches/io_compare.sh run (the shared peers' summary.md).

usage: io_table.py SUMMARY.md [RESULTS_DIR]

Reads the Markdown tables run.sh's summarize.py wrote (HTTP, pipelined HTTP,
echo, idle connections, timers) and prints one table: weft's figure, Tokio's,
the hand-written io_uring server's (each a median across the interleaved
runs), the ratios weft / peer (below 1 is better for costs, above 1 for
throughput), the target and whether it is met. A row with no figure is "-".

With RESULTS_DIR (the run's raw outputs, beside summary.md), the ratios are
paired: for each run r, weft's figure over the peer's in that same run r
(interleaved, so they shared the machine's state), and the ratio columns
and the verdicts use the median of those per-run ratios; without it, the
ratio of the two column medians. A second table gives, for each paired
figure, that median, a 95% confidence interval for it (the sign test's:
order statistics, no assumption about the distribution; none below 6 runs,
and with 6 or 8 runs it is the range) and the range. The verdict is the
median's; a target is met beyond the noise only when the whole interval is
on its side.
"""
import glob
import math
import os
import re
import statistics
import sys


def tables(text):
    """{section title: [row dicts]} for every '### title' followed by a table."""
    out, title, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            title, header = line[4:].strip(), None
            out[title] = []
        elif title and line.startswith("|"):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                out[title].append(dict(zip(header, cells)))
    return out


def num(s):
    """'1.64 ms' / '783 us' / '48,909' / '8,514 B' -> float (times in us)."""
    if s is None or s in ("-", ""):
        return None
    m = re.match(r"([-\d.,]+)\s*(ms|us|s|B)?", s)
    if not m:
        return None
    v = float(m.group(1).replace(",", ""))
    return v * {"ms": 1000.0, "s": 1e6}.get(m.group(2), 1.0)


def find(tabs, prefix):
    for title, rows in tabs.items():
        if title.startswith(prefix):
            return rows
    return []


def cell(rows, server, col, key="server"):
    for r in rows:
        if r.get(key) == server:
            return num(r.get(col))
    return None


# (label, section prefix, column, lower is better, target: max ratio vs tokio, vs io_uring)
SERVER_ROWS = [
    ("HTTP: server CPU us/request", "HTTP plaintext, wrk", "server CPU us/op", True, 0.8, 1.0),
    ("HTTP: requests/s", "HTTP plaintext, wrk", "req/s (median)", False, 1.0, None),
    ("HTTP: p99 latency (us)", "HTTP plaintext, wrk", "p99", True, 1.0, None),
    ("HTTP x16 pipelined: server CPU us/request", "HTTP plaintext pipelined", "server CPU us/op", True, 0.8, 1.0),
    ("HTTP x16 pipelined: requests/s", "HTTP plaintext pipelined", "req/s (median)", False, 1.0, None),
    ("echo: server CPU us/message", "TCP echo, loadgen", "server CPU us/op", True, 0.8, 1.0),
    ("echo: messages/s", "TCP echo, loadgen", "msgs/s (median)", False, 1.0, None),
    ("echo: p99 latency (us)", "TCP echo, loadgen", "p99", True, 1.0, None),
    # The same echo at a fixed rate (open loop): every server carries the same
    # load, so CPU per message compares like for like (no target of its own),
    # and p99 is "no worse than Tokio's at the same load".
    ("echo, open loop: server CPU us/message", "TCP echo, open loop", "server CPU us/op", True,
     None, None),
    ("echo, open loop: p99 latency (us)", "TCP echo, open loop", "p99", True, 1.0, None),
    ("idle: RSS per idle connection (B)", "Idle connections", "RSS growth per conn", True, None, None),
]

TIMER_ROWS = [
    ("sleep_random_1_100ms(1M tasks)_wall_ms", 1.0),
    ("sleep_random_1_100ms(1M tasks)_peak_rss_MiB", None),
    ("sleep_random_1_100ms(1M tasks)_bytes_per_task", 0.3),
    ("timeout_ready(100000)", 0.8),
    ("timeout_ready(2x50000 concurrent)", 0.8),
    ("sleep_1ms_oversleep_p50_us", None),
    ("sleep_1ms_oversleep_p99_us", None),
]


def fmt(v):
    return "-" if v is None else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def verdict(r, target, lower=True):
    if target is None or r is None:
        return "-"
    return "met" if (r <= target if lower else r >= target) else "**not met**"


def main(path, results=None):
    text = open(path).read()
    tabs = tables(text)
    stamp = next((l for l in text.splitlines() if l.startswith("_20")), None)
    if stamp:  # the run's date and settings, as summarize.py wrote them
        print(stamp + "\n")
    print("| benchmark | weft | tokio | io_uring (hand-written) | weft / tokio | weft / io_uring | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for label, sec, col, lower, t_tokio, t_uring in SERVER_ROWS:
        rows = find(tabs, sec)
        w, t, u = (cell(rows, s, col) for s in ("weft", "tokio", "io_uring"))
        rt, ru = ratio(w, t), ratio(w, u)
        if results and label in PAIRED_OF:
            sub_, metric = PAIRED_OF[label]
            rt = median_or_none(paired_ratios(results, sub_, metric, "weft", "tokio"))
            ru = median_or_none(paired_ratios(results, sub_, metric, "weft", "io_uring"))
        target = []
        if t_tokio is not None:
            target.append(f"<= {t_tokio}x tokio" if lower else f">= tokio")
        if t_uring is not None:
            target.append("<= io_uring")
        if label.startswith("idle"):
            target, met = ["< 2048 B"], ("-" if w is None else "met" if w < 2048 else "**not met**")
        else:
            checks = [verdict(rt, t_tokio, lower)] + ([verdict(ru, t_uring)] if t_uring else [])
            met = "**not met**" if "**not met**" in checks else ("met" if "met" in checks else "-")
        print(f"| {label} | {fmt(w)} | {fmt(t)} | {fmt(u)} | {fmt(rt) + 'x' if rt else '-'} "
              f"| {fmt(ru) + 'x' if ru else '-'} | {', '.join(target) or '-'} | {met} |")
    timers = find(tabs, "Timers")
    for name, t_tokio in TIMER_ROWS:
        w, t = cell(timers, name, "weft", "benchmark"), cell(timers, name, "tokio", "benchmark")
        r = ratio(w, t)
        target, met = (f"<= {t_tokio}x tokio", verdict(r, t_tokio)) if t_tokio else ("-", "-")
        if name == "sleep_1ms_oversleep_p99_us":
            target, met = "<= 200 us", ("-" if w is None else "met" if w <= 200 else "**not met**")
        print(f"| {name} | {fmt(w)} | {fmt(t)} | - | {fmt(r) + 'x' if r else '-'} | - | {target} | {met} |")


# (label, results subdirectory, metric) of the figures paired run by run
PAIRED_ROWS = [
    ("HTTP: server CPU us/request", "http", "cpu"),
    ("HTTP: requests/s", "http", "rate"),
    ("HTTP: p99 latency", "http", "p99"),
    ("HTTP x16 pipelined: server CPU us/request", "http_pipe16", "cpu"),
    ("HTTP x16 pipelined: requests/s", "http_pipe16", "rate"),
    ("echo: server CPU us/message", "echo", "cpu"),
    ("echo: messages/s", "echo", "rate"),
    ("echo: p99 latency", "echo", "p99"),
    ("echo, open loop: server CPU us/message", "echo_open", "cpu"),
    ("echo, open loop: p99 latency", "echo_open", "p99"),
]
# SERVER_ROWS label -> (subdirectory, metric)
PAIRED_OF = {label.replace(" (us)", ""): (sub, metric) for label, sub, metric in PAIRED_ROWS}
PAIRED_OF.update({k + " (us)": v for k, v in list(PAIRED_OF.items()) if k.endswith("p99 latency")})


def run_rate(text):
    """Requests (or messages) per second of one run's output."""
    m = (re.search(r"Requests/sec:\s+([\d.]+)", text) or
         re.search(r"^RESULT .*msgs_per_s=([\d.]+)", text, re.M))
    return float(m.group(1)) if m and float(m.group(1)) else None


def run_metric(path, metric):
    """One run's figure: server CPU us per request ("cpu": its .cpu file over
    its rate), its rate ("rate"), or its p99 latency in us ("p99")."""
    text = open(path).read()
    if metric == "rate":
        return run_rate(text)
    if metric == "p99":
        m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            return float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]
        m = re.search(r"^RESULT .*p99_us=([\d.]+)", text, re.M)
        return float(m.group(1)) if m else None
    rate, cpu = run_rate(text), path[:-4] + ".cpu"
    if not rate or not os.path.exists(cpu):
        return None
    kv = dict(x.split("=") for x in open(cpu).read().split())
    return float(kv["cpu_s"]) / float(kv["wall_s"]) / rate * 1e6


def paired_ratios(results, sub, metric, a, b):
    """a's figure over b's, run by run (runs matched by their index)."""
    ratios = []
    for f in sorted(glob.glob(os.path.join(results, sub, f"{a}.*.txt"))):
        g = f.replace(f"/{a}.", f"/{b}.")
        x = run_metric(f, metric)
        y = run_metric(g, metric) if os.path.exists(g) else None
        if x and y:
            ratios.append(x / y)
    return ratios


def median_or_none(xs):
    return statistics.median(xs) if xs else None


def median_ci(xs, level=0.95):
    """(low, high): the sign test's confidence interval for the median of xs,
    the k-th smallest and k-th largest value with k the largest count such
    that P(Binomial(n, 1/2) < k) <= (1 - level) / 2. None when n is too small
    for that level (n < 6 at 95%)."""
    xs, n = sorted(xs), len(xs)
    tail, k = 0.0, 0
    while True:
        nxt = tail + math.comb(n, k) / 2 ** n  # P(Bin < k + 1)
        if nxt > (1 - level) / 2:
            break
        tail, k = nxt, k + 1
    return (xs[k - 1], xs[n - k]) if k >= 1 else None


def paired(results):
    """The per-run ratios; io_uring / tokio is the practical limit's own ratio."""
    pairs = (("weft", "tokio"), ("weft", "io_uring"), ("io_uring", "tokio"))
    print("\n| run by run | runs | "
          + " | ".join(f"{a} / {b}: median [95% CI] (range)" for a, b in pairs) + " |")
    print("|---|---|---|---|---|")
    for label, sub, metric in PAIRED_ROWS:
        cols, runs = [], 0
        for a, b in pairs:
            ratios = paired_ratios(results, sub, metric, a, b)
            runs = max(runs, len(ratios))
            ci = median_ci(ratios) if ratios else None
            cols.append((f"{statistics.median(ratios):.2f}x "
                         + (f"[{ci[0]:.2f}-{ci[1]:.2f}] " if ci else "")
                         + f"({min(ratios):.2f}-{max(ratios):.2f})") if ratios else "-")
        if runs:
            print(f"| {label} | {runs} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    if len(sys.argv) > 2:
        paired(sys.argv[2])
