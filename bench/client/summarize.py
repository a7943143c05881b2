#!/usr/bin/env python3
"""Summarize bench/client/run.sh's runs.tsv: medians per repository, case and tool, and
Petrel's ratios to the other clients, as markdown.

    summarize.py RUNS_TSV
"""
import csv
import statistics
import sys
from collections import defaultdict

TOOL_NAMES = {
    "petrel": "Petrel",
    "pytuf": "python-tuf ngclient",
    "tough": "tough (default HttpTransport)",
    "tough0": "tough (initial_backoff 0)",
}
TOOL_ORDER = ["petrel", "pytuf", "tough", "tough0"]
CASE_NAMES = {"cold": "cold (empty cache)", "warm": "warm (nothing changed)"}


def ratio(a, b):
    """a/b to two significant digits; below 0.01 as 1/N, which reads better."""
    if not b:
        return "n/a"
    r = a / b
    if r == 0:
        return "0"
    return f"1/{b / a:,.0f}" if r < 0.01 else f"{r:.2g}"


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    groups = defaultdict(list)
    for r in rows:
        groups[(r["repo"], r["case"], r["tool"])].append(r)
    repos = list(dict.fromkeys(r["repo"] for r in rows))
    stats = {}
    print("| repository | case | client | wall ms (median) | wall ms min-max | peak RSS MiB (median) | requests (404s) | bytes received | ok runs |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for repo in repos:
        for case in ("cold", "warm"):
            for tool in TOOL_ORDER:
                g = groups.get((repo, case, tool))
                if not g:
                    continue
                ok = [r for r in g if r["status"] == "0"]
                if not ok:
                    print(f"| {repo} | {CASE_NAMES[case]} | {TOOL_NAMES[tool]} | failed | | | "
                          f"{g[0]['requests']} ({g[0]['not_found']}) | {int(g[0]['bytes']):,} | 0/{len(g)} |")
                    continue
                wall = [1000 * float(r["wall_s"]) for r in ok]
                rss = [int(r["maxrss_kb"]) / 1024 for r in ok]
                req = med([int(r["requests"]) for r in ok])
                nf = med([int(r["not_found"]) for r in ok])
                by = med([int(r["bytes"]) for r in ok])
                stats[(repo, case, tool)] = (med(wall), med(rss), req, by)
                print(f"| {repo} | {CASE_NAMES[case]} | {TOOL_NAMES[tool]} | {med(wall):,.0f} | "
                      f"{min(wall):,.0f}-{max(wall):,.0f} | {med(rss):.1f} | {req:g} ({nf:g}) | "
                      f"{by:,.0f} | {len(ok)}/{len(g)} |")
    print()
    print("Ratios of medians, Petrel / other (below 1 means Petrel is faster or smaller):")
    print()
    print("| repository | case | Petrel / | wall time | peak RSS | requests | bytes |")
    print("|---|---|---|---:|---:|---:|---:|")
    for repo in repos:
        for case in ("cold", "warm"):
            p = stats.get((repo, case, "petrel"))
            if not p:
                continue
            for tool in TOOL_ORDER[1:]:
                o = stats.get((repo, case, tool))
                if not o:
                    continue
                cells = []
                for a, b in zip(p, o):
                    cells.append(ratio(a, b))
                print(f"| {repo} | {CASE_NAMES[case]} | {TOOL_NAMES[tool]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
