#!/usr/bin/env python3
"""Summarize bench/publish runs.tsv: medians per case and tool, and Petrel's ratios.

    summarize.py runs.tsv

Prints markdown: wall time (median, with min-max over the runs) and peak RSS (median),
and the ratios petrel/tuftool and petrel/python-tuf of the medians (below 1 means
Petrel is faster or smaller). The floors (`cp -r`, `cp -al` of the input) are shown
beside them, without ratios. Failed runs (non-zero status) are left out and counted.
"""
import csv
import statistics
import sys

TOOLS = ["petrel", "tuftool", "pytuf", "cp", "link"]
NAMES = {
    "petrel": "Petrel",
    "tuftool": "tuftool",
    "pytuf": "python-tuf",
    "cp": "`cp -r` (floor)",
    "link": "`cp -al` (floor)",
}
PEERS = ["tuftool", "pytuf"]  # ratios are given against these only


def case_label(case):
    kind, _, n = case.partition("-")
    n = f"{int(n):,}".replace(",", " ")
    return f"fresh, {n} targets" if kind == "fresh" else f"add 1 to {n} targets"


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    data, failed = {}, {}
    for r in rows:
        key = (r["case"], r["tool"])
        if r["status"] == "0":
            data.setdefault(key, []).append((float(r["wall_s"]), int(r["maxrss_kb"])))
        else:
            failed[key] = failed.get(key, 0) + 1
    tools = [t for t in TOOLS if any(t == r["tool"] for r in rows)]

    def med(case, tool, i):
        v = [x[i] for x in data.get((case, tool), [])]
        return statistics.median(v) if v else None

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "–"

    def cell_time(case, tool):
        v = [x[0] for x in data.get((case, tool), [])]
        if not v:
            return "failed" if failed.get((case, tool)) else "–"
        f = (lambda x: f"{x:.3f}") if max(v) < 1 else (lambda x: f"{x:.2f}")
        s = f"{f(statistics.median(v))} s ({f(min(v))}–{f(max(v))}, n={len(v)})"
        if failed.get((case, tool)):
            s += f" ({failed[(case, tool)]} failed)"
        return s

    def cell_rss(case, tool):
        m = med(case, tool, 1)
        return f"{m / 1024:.0f} MiB" if m is not None else "–"

    others = [t for t in tools if t in PEERS]
    print("### Wall time (median of runs; min–max in brackets)\n")
    print("| case | " + " | ".join(NAMES[t] for t in tools) + " | "
          + " | ".join(f"Petrel / {NAMES[t]}" for t in others) + " |")
    print("|---" * (len(tools) + len(others) + 1) + "|")
    for c in cases:
        cells = [cell_time(c, t) for t in tools]
        ratios = [ratio(med(c, "petrel", 0), med(c, t, 0)) for t in others]
        print(f"| {case_label(c)} | " + " | ".join(cells + ratios) + " |")
    print("\n### Peak RSS (median of runs; largest process of the command)\n")
    print("| case | " + " | ".join(NAMES[t] for t in tools) + " | "
          + " | ".join(f"Petrel / {NAMES[t]}" for t in others) + " |")
    print("|---" * (len(tools) + len(others) + 1) + "|")
    for c in cases:
        cells = [cell_rss(c, t) for t in tools]
        ratios = [ratio(med(c, "petrel", 1), med(c, t, 1)) for t in others]
        print(f"| {case_label(c)} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
