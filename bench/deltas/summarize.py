#!/usr/bin/env python3
"""Medians per (pair, tool) of the delta benchmark, as Markdown tables and results.json.

    summarize.py WORK_DIR        # WORK_DIR: bench/work/deltas

Reads WORK_DIR/results/<pair>/*.jsonl (written by run.sh), prints the tables on stdout and writes
WORK_DIR/results.json. A directory pair (pair.json kind "dir") gets the peers' numbers of
the tar pair made from the same trees (pg-tree-dir: pg-tree), marked "(tar)".
"""
import glob
import json
import os
import statistics
import sys

work = sys.argv[1]
PEERS = ["bsdiff", "xdelta3", "zstd"]
TOOLS = ["petrel"] + PEERS
TAR_OF_DIR = {"pg-tree-dir": "pg-tree"}
DASH = "—"

pairs = {}
for path in sorted(glob.glob(os.path.join(work, "results", "*", "*.jsonl"))):
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    for r in lines:
        p = pairs.setdefault(r["pair"], {"info": {}, "tools": {}, "errors": [], "unavailable": {}})
        kind = r.get("record")
        if kind == "pair":
            p["info"] = r
        elif kind == "error":
            p["errors"].append({"tool": r.get("tool"), "step": r.get("step"), "run": r.get("run"),
                                "reason": r.get("reason"), "timed_out": bool(r.get("timed_out")),
                                "timeout_s": r.get("timeout_s")})
        elif kind == "unavailable":
            p["unavailable"][r["tool"]] = r.get("reason")
        elif kind == "run":
            p["tools"].setdefault(r["tool"], {}).setdefault(r["step"], []).append(r)


def med(rows, key):
    v = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None


out = {"pairs": {}}
for name, p in pairs.items():
    info = p["info"]
    entry = {"kind": info.get("kind"), "new_bytes": info.get("new_bytes"), "old_bytes": info.get("old_bytes"),
             "old": info.get("old"), "new": info.get("new"), "member": info.get("member"),
             "runs": info.get("runs"), "zstd_level": info.get("zstd_level"), "started": info.get("started"),
             "errors": p["errors"], "unavailable": p["unavailable"], "tools": {}}
    for tool, steps in p["tools"].items():
        t = {}
        for step, rows in steps.items():
            t[step] = {"runs": len(rows), "wall_s": med(rows, "wall_s"), "hwm_kb": med(rows, "hwm_kb"),
                       "anon_peak_kb": med(rows, "anon_peak_kb"),
                       "wall_s_all": [r.get("wall_s") for r in rows]}
        creates = steps.get("create", [])
        t["delta_bytes"] = med(creates, "delta_bytes")
        reports = [r.get("report") for r in creates if isinstance(r.get("report"), dict)]
        if reports:
            t["engine"] = reports[-1].get("engine")
            t["engines_chosen"] = sorted({r.get("engine") for r in reports if r.get("engine")})
            t["candidates"] = reports[-1].get("candidates")
            t["report"] = reports[-1]
        failed = {e["step"] for e in p["errors"] if e["tool"] == tool}
        t["complete"] = not failed and "create" in steps and "apply" in steps
        entry["tools"][tool] = t
    for e in p["errors"]:
        t = entry["tools"].setdefault(e["tool"], {"complete": False})
        t["failed_steps"] = sorted(set(t.get("failed_steps", [])) | {e["step"]})
        if e["timed_out"]:  # a step that never finished: how long it was given
            t["timed_out"] = {"step": e["step"], "after_s": e["timeout_s"]}
    out["pairs"][name] = entry


def order(name):
    e = out["pairs"][name]
    return (e.get("new_bytes") or 0, name)


names = sorted(out["pairs"], key=order)


def tool_of(name, tool):
    """The (pair entry, tool entry, from_tar) that stands for TOOL in pair NAME."""
    e = out["pairs"][name]
    t = e["tools"].get(tool)
    if t is None and e.get("kind") == "dir" and tool != "petrel" and TAR_OF_DIR.get(name) in out["pairs"]:
        return out["pairs"][TAR_OF_DIR[name]]["tools"].get(tool), True
    return t, False


def has(t, st="create"):
    """TOOL has measured runs of step ST (a delta built, for "create")."""
    return t is not None and st in t and t[st]["runs"] > 0


def missing(t, st="create"):
    """The cell of a step without measurements: timed out, failed, or not run."""
    to = (t or {}).get("timed_out")
    if to and to["step"] == st:
        return f"timed out (> {to['after_s']} s)"
    if st in (t or {}).get("failed_steps", []):
        return "failed"
    return DASH


def mib(b):
    return f"{b / 1e6:,.1f} MB" if b >= 1e6 else f"{b / 1e3:,.0f} kB"


def cell_size(name, tool):
    t, tar = tool_of(name, tool)
    if not has(t):
        return missing(t)
    nb = out["pairs"][name]["new_bytes"]
    s = f"{t['delta_bytes']:,.0f} ({100 * t['delta_bytes'] / nb:.2f} %)"
    return s + (" (tar)" if tar else "")


def step(name, tool, st):
    t, tar = tool_of(name, tool)
    if not has(t, st):
        return None, tar
    return t[st], tar


def cell(name, tool, st, fmt):
    s, tar = step(name, tool, st)
    if s is None:
        return missing(tool_of(name, tool)[0], st)
    return fmt(s) + (" (tar)" if tar else "")


def secs(v):
    return f"{v:.2f} s" if v >= 0.1 else f"{1000 * v:.0f} ms"


def mem(kb):
    return f"{kb / 1024:,.0f}" if kb >= 10 * 1024 else f"{kb / 1024:,.1f}"


lines = []
w = lines.append
info_rows = []
for n in names:
    e = out["pairs"][n]
    o, nw = e.get("old") or {}, e.get("new") or {}
    src = DASH
    if o.get("package"):
        src = (f"{o['package']} {o.get('version')} → {nw.get('version')}" if o["package"] == nw.get("package")
               else f"{o['package']} {o.get('version')} → {nw.get('package')} {nw.get('version')}")
    info_rows.append(f"| {n} | {e.get('member') or DASH} | {src} | {e.get('old_bytes') or 0:,} | {e.get('new_bytes') or 0:,} |")
w("**Pairs**\n")
w("| pair | what | package, old → new version | old bytes | new bytes |")
w("|---|---|---|---:|---:|")
lines += info_rows

w("\n**Delta size** (bytes, and % of the new version; medians)\n")
w("| pair | new size | Petrel | Petrel's engine | bsdiff | xdelta3 | zstd | Petrel ÷ best peer |")
w("|---|---:|---:|---|---:|---:|---:|---:|")
for n in names:
    e = out["pairs"][n]
    pt, _ = tool_of(n, "petrel")
    peer_sizes = [tool_of(n, t)[0]["delta_bytes"] for t in PEERS if has(tool_of(n, t)[0])]
    ratio = DASH
    if has(pt) and peer_sizes:
        best = min(peer_sizes)
        ratio = f"{pt['delta_bytes'] / best:.2f}"
    engine = ", ".join(pt.get("engines_chosen") or []) if has(pt) else DASH
    w(f"| {n} | {mib(e['new_bytes'])} | {cell_size(n, 'petrel')} | {engine or DASH} | "
      + " | ".join(cell_size(n, t) for t in PEERS) + f" | {ratio} |")

w("\n**Building the delta**: wall time (medians)\n")
w("| pair | Petrel | bsdiff | xdelta3 | zstd | Petrel's speedup vs bsdiff |")
w("|---|---:|---:|---:|---:|---:|")
for n in names:
    cells = [cell(n, t, "create", lambda s: secs(s["wall_s"])) for t in TOOLS]
    ps, _ = step(n, "petrel", "create")
    bs, _ = step(n, "bsdiff", "create")
    sp = f"{bs['wall_s'] / ps['wall_s']:.2f}×" if ps and bs else DASH
    w(f"| {n} | " + " | ".join(cells) + f" | {sp} |")

for n in names:
    pk, _ = step(n, "petrel", "pack")
    if pk:
        ps, _ = step(n, "petrel", "create")
        bs, _ = step(n, "bsdiff", "create")
        both = (f"; packing and the delta together: {secs(pk['wall_s'] + ps['wall_s'])}"
                + (f", {bs['wall_s'] / (pk['wall_s'] + ps['wall_s']):.2f}× bsdiff's time" if bs else "")) if ps else ""
        w(f"\n{n}: the delta is built between the two tree artifacts, as `publish` does. Packing the "
          f"new tree into its artifact (`petrel-repo pack-tree`, what `add` stores; the full download) "
          f"took {secs(pk['wall_s'])}{both}.")

w("\n**Building the delta**: peak memory, total (VmHWM) / anonymous (RssAnon), MiB (medians)\n")
w("| pair | Petrel | bsdiff | xdelta3 | zstd |")
w("|---|---:|---:|---:|---:|")
for n in names:
    cells = [cell(n, t, "create", lambda s: f"{mem(s['hwm_kb'])} / {mem(s['anon_peak_kb'])}") for t in TOOLS]
    w(f"| {n} | " + " | ".join(cells) + " |")

APPLY = [("petrel", "apply", "Petrel (mmap)"), ("petrel", "apply-streaming", "Petrel (streaming)"),
         ("bsdiff", "apply", "bspatch"), ("xdelta3", "apply", "xdelta3 -d"), ("zstd", "apply", "zstd -d")]
w("\n**Applying the delta**: wall time, and MB/s of the new version written (medians)\n")
w("| pair | " + " | ".join(a[2] for a in APPLY) + " |")
w("|---|" + "---:|" * len(APPLY))
for n in names:
    nb = out["pairs"][n]["new_bytes"]
    cells = [cell(n, t, st, lambda s: f"{secs(s['wall_s'])} ({nb / 1e6 / s['wall_s']:,.0f} MB/s)") for t, st, _ in APPLY]
    w(f"| {n} | " + " | ".join(cells) + " |")

w("\n**Applying the delta**: peak memory, total (VmHWM) / anonymous (RssAnon), MiB (medians)\n")
w("| pair | " + " | ".join(a[2] for a in APPLY) + " |")
w("|---|" + "---:|" * len(APPLY))
for n in names:
    cells = [cell(n, t, st, lambda s: f"{mem(s['hwm_kb'])} / {mem(s['anon_peak_kb'])}") for t, st, _ in APPLY]
    w(f"| {n} | " + " | ".join(cells) + " |")

cand = [(n, out["pairs"][n]["tools"]["petrel"]) for n in names
        if has(out["pairs"][n]["tools"].get("petrel")) and out["pairs"][n]["tools"]["petrel"].get("candidates")]
if cand:
    engines = sorted({k for _, t in cand for k in t["candidates"]})
    w("\n**Petrel's candidates** (bytes of each engine's delta; the smallest is kept)\n")
    w("| pair | chosen | " + " | ".join(engines) + " |")
    w("|---|---|" + "---:|" * len(engines))
    for n, t in cand:
        c = t["candidates"]
        w(f"| {n} | {t.get('engine')} | " + " | ".join(
            (f"{c[k]:,}" if isinstance(c.get(k), (int, float)) else (str(c[k]) if k in c else DASH)) for k in engines) + " |")

notes = []
for n in names:
    e = out["pairs"][n]
    for tool, reason in e["unavailable"].items():
        notes.append(f"* {n}: {tool}: {reason}")
    for err in e["errors"]:
        notes.append(f"* {n}: {err['tool']} ({err['step']}, run {err['run']}): {str(err['reason']).strip()[:300]}")
if notes:
    w("\n**Not measured / failed**\n")
    lines += sorted(set(notes))

print("\n".join(lines))
with open(os.path.join(work, "results.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
