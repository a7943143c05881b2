#!/usr/bin/env python3
"""Turns bench/fleet/sim.py results (JSON files) into the markdown tables of bench/README.md."""

import json
import sys


def kb(n):
    return f"{n / 1000:.1f} KB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


def egress(n):
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n / 1e3:.1f} KB"


def main():
    rs = [json.load(open(p)) for p in sys.argv[1:]]
    rs.sort(key=lambda r: (r["devices"], r["layout"] != "today"))
    print("| fleet | layout | first poll | no change | unrelated change | own change | egress per unrelated publish |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rs:
        p = r["polls"]
        cell = lambda k: f"{kb(p[k]['bytes_median'])} ({p[k]['requests_median']} req)"
        fleet = f"{r['devices']:,} / {r['groups']:,} / {r['campaigns']:,}"
        print(f"| {fleet} | {r['layout']} | {cell('first')} | {cell('no change')} | "
              f"{cell('unrelated change')} | {cell('own change')} | {egress(r['egress_per_unrelated_publish_bytes'])} |")
    print()
    print("| fleet | layout | group set DIR | campaign create DIR | assign --csv | first publish | publish after one change | files written | tree files |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rs:
        a = r["authoring"]
        t = lambda k: f"{a[k]['seconds']:.1f} s, {a[k]['peak_mib']:.0f} MiB"
        one = r["publish after one change"]
        fleet = f"{r['devices']:,} / {r['groups']:,} / {r['campaigns']:,}"
        print(f"| {fleet} | {r['layout']} | {t('group set DIR')} | {t('campaign create DIR')} | {t('assign --csv')} | "
              f"{t('publish')} | {one['seconds']:.2f} s | {one['files_written']} | {r['tree_files']:,} |")


if __name__ == "__main__":
    main()
