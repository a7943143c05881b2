#!/usr/bin/env python3
"""Fleet simulator: builds a fleet with petrel-repo's bulk commands, serves it with
petrel-server on loopback, and measures what sample devices download.

    bench/fleet/sim.py --devices 1000000 --groups 10000 --campaigns 1000 \
        --layout scaled --out bench/work/fleet/1m-scaled

For each layout (`today`: one role per manifest kind and the whole snapshot, as Petrel
published before the snapshot tree; `scaled`: hashed bins under every manifest role, the
campaign index and the snapshot tree) it records, as JSON on stdout:

* authoring: wall time and peak memory of `group set DIR`, `campaign create DIR`,
  `assign --csv FILE` and the first `publish`;
* for sample devices (in groups that have a campaign): bytes and requests of the first
  poll, a poll with nothing changed, a poll after a campaign for *another* group changed,
  and a poll after the device's own campaign changed (`petrel check`, bytes counted from
  petrel-server's access log);
* the publish after one campaign change: wall time and files written to the tree;
* CDN egress of one unrelated publish: mean unrelated-poll bytes x devices.

Binaries: PETREL_REPO_BIN, PETREL_BIN, PETREL_SERVER_BIN (release builds; bench/fleet/run.sh
builds them). Every wait is bounded.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def need(name):
    v = os.environ.get(name)
    if not v or not os.path.exists(v):
        sys.exit(f"sim.py: set {name} to the binary (bench/fleet/run.sh does)")
    return v


REPO = need("PETREL_REPO_BIN")
AGENT = need("PETREL_BIN")
SERVER = need("PETREL_SERVER_BIN")
TIMEOUT = int(os.environ.get("TIMEOUT", "3600"))


def run(args, timed=False, **kw):
    """Runs a command (bounded); with timed, returns (seconds, peak RSS MiB)."""
    cmd = list(args)
    if timed:
        cmd = ["/usr/bin/time", "-f", "%e %M"] + cmd
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    if p.returncode != 0:
        sys.exit(f"sim.py: {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if not timed:
        return p.stdout
    last = p.stderr.strip().splitlines()[-1].split()
    return {"seconds": round(time.monotonic() - t0, 2), "peak_mib": round(int(last[1]) / 1024, 1)}


def pow2_at_least(n, lo=16, hi=4096):
    b = lo
    while b < n and b < hi:
        b *= 2
    return b


def settings(layout, devices, groups, campaigns):
    """(top-level keys, [layout] table) for petrel-repo.toml."""
    if layout == "today":
        # As measured before the snapshot tree: 3-digit assignment bins under 256 hashed
        # bins, one role for groups and one for campaigns, the whole snapshot.
        return "assign_bin_digits = 3\n", "\n[layout]\nsnapshot_tree = false\nassign_bins = 256\n"
    digits = 2 if devices <= 20_000 else 3 if devices <= 300_000 else 4
    files = 16**digits
    return (
        f"assign_bin_digits = {digits}\n",
        "\n[layout]\n"
        f"groups_bins = {pow2_at_least(groups // 2)}\n"
        f"campaigns_bins = {pow2_at_least(campaigns // 2)}\n"
        f"index_bins = {pow2_at_least(groups // 2)}\n"
        f"assign_bins = {pow2_at_least(files // 16)}\n"
        "campaign_index = true\n",
    )


def tree_files(tree):
    out = {}
    for d, _, fs in os.walk(tree):
        for f in fs:
            p = os.path.join(d, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


class Server:
    def __init__(self, tree, log):
        self.log_path = log
        self.err = open(log, "w")
        self.p = subprocess.Popen(
            [SERVER, "serve", "--root", tree, "--listen", "127.0.0.1:0", "--access-log"],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        deadline = time.monotonic() + 30
        self.url = None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            m = re.search(r"listening on (http://\S+)", line or "")
            if m:
                self.url = m.group(1).rstrip("/")
                break
            if self.p.poll() is not None:
                break
        if not self.url:
            sys.exit(f"sim.py: petrel-server did not start: {open(log).read()[-2000:]}")

    def lines(self):
        self.err.flush()
        with open(self.log_path) as f:
            return [l for l in f if ACCESS.search(l)]

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()


ACCESS = re.compile(r"(GET|HEAD) (\S+) (\d{3}) (\d+) ")


def count(lines):
    reqs, total, by = 0, 0, {}
    for l in lines:
        m = ACCESS.search(l)
        if not m:
            continue
        reqs += 1
        n = int(m.group(4))
        total += n
        kind = classify(m.group(2))
        by[kind] = by.get(kind, 0) + n
    return {"requests": reqs, "bytes": total, "by_kind": by}


def classify(path):
    if "/snapshot-tree/" in path:
        return "snapshot tree"
    if path.endswith("snapshot.json"):
        return "snapshot"
    if path.endswith("timestamp.json") or path.endswith("root.json"):
        return "root+timestamp"
    if path.startswith("/metadata/"):
        return "targets roles"
    return "manifests"


class Device:
    def __init__(self, base, sid, group, url, digits, tree):
        self.dir = os.path.join(base, sid)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "apps"))
        os.makedirs(os.path.join(self.dir, "state"))
        with open(os.path.join(self.dir, "profile.toml"), "w") as f:
            f.write(f'id = "{sid}"\ntype = "kiosk"\nvendor = "acme"\nregion = "eu-west"\n'
                    'channel = "stable"\nutc_offset_minutes = 0\nlocale = "en"\n')
        self.config = os.path.join(self.dir, "device.toml")
        with open(self.config, "w") as f:
            f.write(f'state_dir = "{self.dir}/state"\nprofile = "{self.dir}/profile.toml"\n'
                    f'[repository]\nmetadata_url = "{url}/metadata"\ntargets_url = "{url}/targets"\n'
                    f'assign_bin_digits = {digits}\n[inventory]\ndir = "{self.dir}/apps"\n')
        run([AGENT, "--config", self.config, "init", "--root", os.path.join(tree, "metadata", "1.root.json")])
        self.id, self.group = sid, group

    def check(self):
        run([AGENT, "--config", self.config, "check"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--groups", type=int, required=True)
    ap.add_argument("--campaigns", type=int, required=True)
    ap.add_argument("--layout", choices=["today", "scaled"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=4)
    a = ap.parse_args()

    out = os.path.abspath(a.out)
    shutil.rmtree(out, ignore_errors=True)
    inp, ws = os.path.join(out, "input"), os.path.join(out, "ws")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_fleet.py"), inp, "--groups", str(a.groups),
                    "--campaigns", str(a.campaigns), "--devices", str(a.devices)], check=True, timeout=TIMEOUT)
    result = {"devices": a.devices, "groups": a.groups, "campaigns": a.campaigns, "layout": a.layout}

    run([REPO, "--repo", ws, "init"])
    text = open(os.path.join(ws, "petrel-repo.toml")).read()
    with open(os.path.join(ws, "petrel-repo.toml"), "w") as f:
        top, table = settings(a.layout, a.devices, a.groups, a.campaigns)
        f.write(top + text + table)
    digits = int(re.search(r"assign_bin_digits = (\d)", open(os.path.join(ws, "petrel-repo.toml")).read()).group(1))
    run([REPO, "--repo", ws, "add", os.path.join(inp, "artifacts"), "--prefix", "apps/acme/fw"])
    run([REPO, "--repo", ws, "publish"])
    authoring = {}
    authoring["group set DIR"] = run([REPO, "--repo", ws, "group", "set", os.path.join(inp, "groups")], timed=True)
    authoring["campaign create DIR"] = run([REPO, "--repo", ws, "campaign", "create", os.path.join(inp, "campaigns")], timed=True)
    authoring["assign --csv"] = run([REPO, "--repo", ws, "assign", "--csv", os.path.join(inp, "devices.csv")], timed=True)
    authoring["publish"] = run([REPO, "--repo", ws, "publish"], timed=True)
    result["authoring"] = authoring
    tree = os.path.join(ws, "tree")
    result["tree_files"] = len(tree_files(tree))

    gw = len(str(a.groups - 1))
    cw = len(str(max(a.campaigns - 1, 0)))
    server = Server(tree, os.path.join(out, "server.log"))
    try:
        # Sample devices in groups 1..samples (every such group has campaign j = group).
        samples = []
        for s in range(1, a.samples + 1):
            k = s  # device k is in group k % groups
            samples.append(Device(os.path.join(out, "devices"), f"dev-{k:07d}", f"g{k % a.groups:0{gw}d}", server.url, digits, tree))

        def poll_all():
            res = []
            for d in samples:
                before = len(server.lines())
                d.check()
                res.append(count(server.lines()[before:]))
            return res

        polls = {"first": poll_all(), "no change": poll_all()}

        def change_campaign(j):
            path = os.path.join(inp, "campaigns", f"c{j:0{cw}d}.toml")
            text = open(path).read()
            rev = int(re.search(r"^revision = (\d+)", text, re.M).group(1)) + 1
            text = re.sub(r"^revision = \d+", f"revision = {rev}", text, count=1, flags=re.M)
            text = text.replace("Benchmark campaign", f"Benchmark campaign (revision {rev})", 1)
            open(path, "w").write(text)
            run([REPO, "--repo", ws, "campaign", "update", path])
            before = tree_files(tree)
            t = run([REPO, "--repo", ws, "publish"], timed=True)
            after = tree_files(tree)
            t["files_written"] = sum(1 for p, m in after.items() if before.get(p) != m)
            return t

        # Another group's campaign: the last campaign (its group is not a sample's).
        other = a.campaigns - 1
        assert other % a.groups > a.samples, "the unrelated campaign's group must not be a sample's"
        result["publish after one change"] = change_campaign(other)
        polls["unrelated change"] = poll_all()
        change_campaign(1)  # sample 1's own campaign
        polls["own change"] = poll_all()
        result["polls"] = {k: {"bytes_median": sorted(p["bytes"] for p in v)[len(v) // 2],
                               "bytes_max": max(p["bytes"] for p in v),
                               "requests_median": sorted(p["requests"] for p in v)[len(v) // 2],
                               "by_kind": v[0]["by_kind"]} for k, v in polls.items()}
        result["egress_per_unrelated_publish_bytes"] = result["polls"]["unrelated change"]["bytes_median"] * a.devices
    finally:
        server.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
