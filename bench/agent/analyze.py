#!/usr/bin/env python3
"""Helpers of bench/agent/run.sh: waiting for polls, one run's numbers, the summary table.

    analyze.py wait-poll PROXY_LOG PATTERN TIMEOUT_S
        wait until the proxy logs a new request whose path matches PATTERN (a regex);
        print its time; exit 1 after TIMEOUT_S without one
    analyze.py run TOOL RUN PATTERN RUN_DIR >> runs.tsv
        RUN_DIR holds proxy.log, start.json and end.json (procstat.py at the window's ends);
        prints one tab-separated row (header with --header) and writes RUN_DIR/requests.txt
    analyze.py summary runs.tsv [--tools "petrel mender swupdate"] > summary.md
    analyze.py idle-summary idle.tsv [--tools ...]    the agents asleep, polls an hour apart

A poll is one request of the tool's poll request (PATTERN) inside the window. Bytes are
every byte the proxy forwarded in the window, both directions, over all connections.
"""
import json
import re
import statistics
import sys
import time

COLUMNS = [
    "tool", "run", "t0", "t1", "seconds", "polls", "requests", "connections",
    "bytes_c2s", "bytes_s2c", "poll_req_bytes", "poll_resp_bytes",
    "rss_warm_kb", "rss_end_kb", "hwm_end_kb", "pss_end_kb", "main_rss_end_kb", "main_hwm_end_kb",
    "procs", "threads", "cpu_ns", "cpu_ticks", "clk_tck", "ctxt",
]


def read_log(path):
    events = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            events.append((float(parts[0]), parts[1], parts[2:]))
    return events


def wait_poll(log, pattern, timeout):
    rx = re.compile(pattern)
    start = time.time()
    deadline = start + float(timeout)
    while time.time() < deadline:
        try:
            for t, kind, rest in read_log(log):
                if kind == "req" and t > start and rx.search(rest[2]):
                    print("%.6f" % t)
                    return 0
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return 1


def tree_sum(snap, key):
    return sum(p[key] for p in snap["procs"])


def cpu_of(snap):
    """Per pid: (taskstats ns or None, ticks utime+stime+cutime+cstime)."""
    out = {}
    for p in snap["procs"]:
        out[p["pid"]] = (p["cpu_ns"], p["utime"] + p["stime"] + p["cutime"] + p["cstime"])
    return out


def one_run(tool, run, pattern, d, header=False):
    rx = re.compile(pattern)
    start = json.load(open(d + "/start.json"))
    end = json.load(open(d + "/end.json"))
    warm = start  # the first snapshot is taken right after the warm-up
    t0, t1 = start["time"], end["time"]
    events = read_log(d + "/proxy.log")
    polls = requests = conns = c2s = s2c = 0
    pending = {}  # conn -> [(method, path, req_bytes, t)] not yet answered
    pairs = []
    for t, kind, rest in events:
        if kind == "req":
            pending.setdefault(rest[0], []).append((rest[1], rest[2], int(rest[3]), t))
        elif kind == "resp" and pending.get(rest[0]):
            m, p, rb, tq = pending[rest[0]].pop(0)
            pairs.append((tq, m, p, int(rest[1]), rb, int(rest[2])))
        if not (t0 <= t <= t1):
            continue
        if kind == "open":
            conns += 1
        elif kind == "c2s":
            c2s += int(rest[1])
        elif kind == "s2c":
            s2c += int(rest[1])
        elif kind == "req":
            requests += 1
            if rx.search(rest[2]):
                polls += 1
    poll_req = poll_resp = 0
    breakdown = {}
    for tq, m, p, status, rb, sb in pairs:
        if not (t0 <= tq <= t1):
            continue
        key = (m, re.sub(r"\?.*", "?…", p), status)
        n, a, b = breakdown.get(key, (0, 0, 0))
        breakdown[key] = (n + 1, a + rb, b + sb)
        if rx.search(p):
            poll_req += rb
            poll_resp += sb
    with open(d + "/requests.txt", "w") as f:
        f.write("# requests in the window [%.3f, %.3f]: count, method, path, status, "
                "request bytes (mean), response bytes (mean)\n" % (t0, t1))
        for (m, p, st), (n, a, b) in sorted(breakdown.items(), key=lambda kv: -kv[1][0]):
            f.write("%d\t%s\t%s\t%d\t%.0f\t%.0f\n" % (n, m, p, st, a / n, b / n))
    c0, c1 = cpu_of(start), cpu_of(end)
    x0 = {p["pid"]: p.get("ctxt", 0) for p in start["procs"]}
    ctxt_total = sum(p.get("ctxt", 0) - x0.get(p["pid"], 0) for p in end["procs"])
    ns_total, ticks_total, ns_ok = 0, 0, True
    for pid, (ns, ticks) in c1.items():
        ns0, ticks0 = c0.get(pid, (0, 0))
        if ns is None or ns0 is None:
            ns_ok = False
        else:
            ns_total += ns - ns0
        ticks_total += ticks - ticks0
    main_end = end["procs"][0] if end["procs"] else {"rss_kb": 0, "hwm_kb": 0}
    row = {
        "tool": tool, "run": run, "t0": "%.3f" % t0, "t1": "%.3f" % t1,
        "seconds": "%.3f" % (t1 - t0), "polls": polls, "requests": requests,
        "connections": conns, "bytes_c2s": c2s, "bytes_s2c": s2c,
        "poll_req_bytes": poll_req, "poll_resp_bytes": poll_resp,
        "rss_warm_kb": tree_sum(warm, "rss_kb"), "rss_end_kb": tree_sum(end, "rss_kb"),
        "hwm_end_kb": tree_sum(end, "hwm_kb"), "pss_end_kb": tree_sum(end, "pss_kb"),
        "main_rss_end_kb": main_end["rss_kb"], "main_hwm_end_kb": main_end["hwm_kb"],
        "procs": len(end["procs"]), "threads": tree_sum(end, "threads"),
        "cpu_ns": ns_total if ns_ok else "", "cpu_ticks": ticks_total,
        "clk_tck": end.get("clk_tck", 100), "ctxt": ctxt_total,
    }
    if header:
        print("\t".join(COLUMNS))
    print("\t".join(str(row[c]) for c in COLUMNS))
    return 0


def fmt(v, digits):
    return ("%%.%df" % digits) % v


def summary(path, tools):
    rows = []
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip() and not line.startswith("tool\t"):
                rows.append(dict(zip(head, line.rstrip("\n").split("\t"))))
    names = {"petrel": "Petrel `petrel run`", "mender": "Mender `mender daemon` 3.4",
             "swupdate": "SWUpdate 2022.12 suricatta (hawkBit)"}
    metrics = [
        # key, label, function(row) -> value or None, digits
        ("rss", "idle RSS (MiB)", lambda r: int(r["rss_end_kb"]) / 1024, 1),
        ("hwm", "peak RSS, VmHWM (MiB)", lambda r: int(r["hwm_end_kb"]) / 1024, 1),
        ("cpu", "CPU per poll (ms)",
         lambda r: int(r["cpu_ns"]) / 1e6 / int(r["polls"]) if r["cpu_ns"] else None, 2),
        ("bytes", "bytes per no-change poll",
         lambda r: (int(r["bytes_c2s"]) + int(r["bytes_s2c"])) / int(r["polls"]), 0),
        ("reqs", "requests per poll", lambda r: int(r["requests"]) / int(r["polls"]), 2),
    ]
    extra = [
        ("rss_warm", "RSS after the warm-up (MiB)", lambda r: int(r["rss_warm_kb"]) / 1024, 1),
        ("pss", "PSS at the end (MiB)", lambda r: int(r["pss_end_kb"]) / 1024, 1),
        ("ticks", "CPU per poll from /proc/PID/stat ticks (ms)",
         lambda r: int(r["cpu_ticks"]) * 1000 / int(r["clk_tck"]) / int(r["polls"]), 2),
        ("up", "bytes sent per poll", lambda r: int(r["bytes_c2s"]) / int(r["polls"]), 0),
        ("down", "bytes received per poll", lambda r: int(r["bytes_s2c"]) / int(r["polls"]), 0),
        ("pollbytes", "bytes of the poll request itself (request + response)",
         lambda r: (int(r["poll_req_bytes"]) + int(r["poll_resp_bytes"])) / int(r["polls"]), 0),
        ("conns", "new TCP connections per poll", lambda r: int(r["connections"]) / int(r["polls"]), 2),
        ("ctxt", "context switches per poll (times it was scheduled)",
         lambda r: int(r["ctxt"]) / int(r["polls"]), 0),
        ("polls", "polls in the window", lambda r: int(r["polls"]), 0),
        ("procs", "processes / threads", None, 0),
    ]
    present = [t for t in tools if any(r["tool"] == t for r in rows)]
    med = {}

    def cell(tool, key, fn, digits):
        vals = [fn(r) for r in rows if r["tool"] == tool and int(r["polls"]) > 0]
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        m = statistics.median(vals)
        med[(tool, key)] = m
        if len(vals) == 1:
            return fmt(m, digits)
        return "%s (%s–%s)" % (fmt(m, digits), fmt(min(vals), digits), fmt(max(vals), digits))

    out = []
    nruns = {t: sum(1 for r in rows if r["tool"] == t) for t in present}
    out.append("| agent | runs | " + " | ".join(m[1] for m in metrics) + " |")
    out.append("|---|---:|" + "---:|" * len(metrics))
    for t in present:
        out.append("| %s | %d | " % (names.get(t, t), nruns[t])
                   + " | ".join(cell(t, k, fn, d) for k, _, fn, d in metrics) + " |")
    out.append("")
    out.append("Median (min–max) of the runs. Ratios of the medians, Petrel / peer "
               "(below 1: Petrel uses less):")
    out.append("")
    peers = [t for t in present if t != "petrel"]
    if "petrel" in present and peers:
        out.append("| Petrel / peer | " + " | ".join(m[1] for m in metrics) + " |")
        out.append("|---|" + "---:|" * len(metrics))
        for p in peers:
            cells = []
            for k, _, _, _ in metrics:
                a, b = med.get(("petrel", k)), med.get((p, k))
                cells.append("%.2f" % (a / b) if a is not None and b else "–")
            out.append("| / %s | " % names.get(p, p) + " | ".join(cells) + " |")
        out.append("")
    out.append("More of the same runs:")
    out.append("")
    out.append("| | " + " | ".join(names.get(t, t) for t in present) + " |")
    out.append("|---|" + "---:|" * len(present))
    for k, label, fn, d in extra:
        if k == "procs":
            cells = []
            for t in present:
                rs = [r for r in rows if r["tool"] == t]
                cells.append("%s / %s" % (rs[-1]["procs"], rs[-1]["threads"]) if rs else "–")
            out.append("| %s | %s |" % (label, " | ".join(cells)))
            continue
        out.append("| %s | %s |" % (label, " | ".join(cell(t, k, fn, d) for t in present)))
    print("\n".join(out))
    return 0


def idle_summary(path, tools):
    """One row per agent: CPU and wake-ups while it sleeps between two polls an hour apart."""
    names = {"petrel": "Petrel", "mender": "Mender", "swupdate": "SWUpdate"}
    rows = []
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip() and not line.startswith("tool\t"):
                rows.append(dict(zip(head, line.rstrip("\n").split("\t"))))
    out = ["| agent asleep (poll interval 1 h) | window | polls in it | CPU per minute asleep (ms) "
           "| context switches per second | RSS (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for t in tools:
        for r in (r for r in rows if r["tool"] == t):
            sec = float(r["seconds"])
            cpu = int(r["cpu_ns"]) / 1e6 * 60 / sec if r["cpu_ns"] else float("nan")
            out.append("| %s | %.0f s | %s | %.2f | %.1f | %.1f |" % (
                names.get(t, t), sec, r["polls"], cpu, int(r["ctxt"]) / sec,
                int(r["rss_end_kb"]) / 1024))
    print("\n".join(out))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "wait-poll":
        return wait_poll(argv[2], argv[3], argv[4])
    if cmd == "run":
        header = "--header" in argv
        args = [a for a in argv[2:] if a != "--header"]
        return one_run(args[0], args[1], args[2], args[3], header)
    if cmd == "idle-summary":
        tools = argv[argv.index("--tools") + 1] if "--tools" in argv else "petrel mender swupdate"
        return idle_summary(argv[2], tools.split())
    if cmd == "summary":
        tools = "petrel mender swupdate"
        if "--tools" in argv:
            tools = argv[argv.index("--tools") + 1]
        return summary(argv[2], tools.split())
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
