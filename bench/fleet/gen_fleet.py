#!/usr/bin/env python3
"""Writes the input of a fleet-authoring benchmark for `petrel-repo`.

    bench/fleet/gen_fleet.py OUT --groups N --campaigns C --devices D [--artifacts A]

OUT gets:
  artifacts/<k>/fw.bin   A small artifacts (added as apps/acme/fw/<k>/fw.bin)
  groups/g<i>.toml       N group manifests, group i runs artifact i % A
  campaigns/c<j>.toml    C campaign manifests, campaign j for group j % N (revision 1);
                         every fourth one has a canary stage
  devices.csv            D lines device_id,group[,canary] (header first; device k in
                         group k % N, every hundredth device a canary)

A run (scratch under bench/work/, which git ignores):

    OUT=bench/work/fleet; WS=$OUT/ws
    bench/fleet/gen_fleet.py $OUT --groups 10000 --campaigns 1000 --devices 1000000
    petrel-repo --repo $WS init && sed -i '1i assign_bin_digits = 4' $WS/petrel-repo.toml
    petrel-repo --repo $WS add $OUT/artifacts --prefix apps/acme/fw && petrel-repo --repo $WS publish
    /usr/bin/time -v petrel-repo --repo $WS group set $OUT/groups
    /usr/bin/time -v petrel-repo --repo $WS campaign create $OUT/campaigns
    /usr/bin/time -v petrel-repo --repo $WS assign --csv $OUT/devices.csv
"""

import argparse
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--campaigns", type=int, default=1_000)
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--artifacts", type=int, default=20)
    a = ap.parse_args()
    if a.groups < 1 or a.artifacts < 1:
        ap.error("--groups and --artifacts must be at least 1")

    for sub in ("artifacts", "groups", "campaigns"):
        os.makedirs(os.path.join(a.out, sub), exist_ok=True)

    for k in range(a.artifacts):
        d = os.path.join(a.out, "artifacts", str(k))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "fw.bin"), "w") as f:
            f.write(f"firmware {k}\n")

    gw = len(str(a.groups - 1))
    for i in range(a.groups):
        gid = f"g{i:0{gw}d}"
        k = i % a.artifacts
        with open(os.path.join(a.out, "groups", f"{gid}.toml"), "w") as f:
            f.write(
                f'''kind = "group"
schema_version = 1
id = "{gid}"
revision = 1
description = "benchmark group {i}"

[apps."acme.fw"]
version = "{k}.0"
target = "apps/acme/fw/{k}/fw.bin"
post_install = "start"
'''
            )

    cw = len(str(max(a.campaigns - 1, 0)))
    for j in range(a.campaigns):
        cid = f"c{j:0{cw}d}"
        gid = f"g{j % a.groups:0{gw}d}"
        canary = "\n[rollout]\ncanary = true\n" if j % 4 == 0 else ""
        with open(os.path.join(a.out, "campaigns", f"{cid}.toml"), "w") as f:
            f.write(
                f'''kind = "campaign"
schema_version = 1
id = "{cid}"
revision = 1
state = "active"
method = "normal"

[notice.en]
title = "Firmware for {gid}"
body = "Benchmark campaign {j}."
severity = "recommended"

[consent]
policy = "none"

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "{gid}", revision = 1 }}
{canary}'''
            )

    with open(os.path.join(a.out, "devices.csv"), "w") as f:
        f.write("device_id,group,canary\n")
        for k in range(a.devices):
            canary = "true" if k % 100 == 0 else ""
            f.write(f"dev-{k:07d},g{k % a.groups:0{gw}d},{canary}\n")


if __name__ == "__main__":
    main()
