#!/usr/bin/env python3
"""Snapshot of one agent's process tree, for bench/agent/run.sh.

    procstat.py PID        prints one JSON object on stdout

For PID and every live descendant (found through /proc/*/stat parent ids):
  rss_kb, hwm_kb     VmRSS and VmHWM from /proc/P/status
  pss_kb             Pss from /proc/P/smaps_rollup (shared pages split between sharers)
  threads            Threads from /proc/P/status
  ctxt               voluntary + involuntary context switches of its live threads
                     (/proc/P/task/*/status): how often it was scheduled
  utime, stime, cutime, cstime
                     fields 14-17 of /proc/P/stat, in clock ticks (CLK_TCK, 100 here)
  cpu_ns             the thread group's CPU time in nanoseconds, from the kernel's taskstats
                     (netlink, TASKSTATS_CMD_GET by TGID: cpu_run_virtual_total, the sum of
                     every thread's se.sum_exec_runtime, threads that already exited
                     included); null when taskstats is not available

/proc/P/stat's ticks are truncated to 10 ms per field on every read, which is too coarse
for an agent that uses a few milliseconds per poll; cpu_ns is exact. Children that a
process already reaped only show up in its cutime/cstime (ticks).
"""
import json
import os
import socket
import struct
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def stat_fields(pid):
    s = read("/proc/%d/stat" % pid)
    if s is None:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); field N is rest[N-3]
    return {
        "comm": s[s.index("(") + 1: s.rindex(")")],
        "ppid": int(rest[1]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
    }


def status_kb(pid):
    out = {}
    s = read("/proc/%d/status" % pid) or ""
    for line in s.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
        elif k == "Threads":
            out[k] = int(v)
    s = read("/proc/%d/smaps_rollup" % pid) or ""
    for line in s.splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
    return out


class Taskstats:
    """Minimal generic-netlink client for TASKSTATS_CMD_GET with TASKSTATS_CMD_ATTR_TGID."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
        self.sock.settimeout(2.0)
        self.sock.bind((0, 0))
        self.seq = 0
        attrs = self.request(0x10, 3, self.nla(2, b"TASKSTATS\0"))  # CTRL_CMD_GETFAMILY
        self.family = next(struct.unpack("H", v[:2])[0] for t, v in attrs if t == 1)

    @staticmethod
    def nla(kind, payload):
        n = 4 + len(payload)
        return struct.pack("HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)

    @staticmethod
    def parse(buf):
        out, i = [], 0
        while i + 4 <= len(buf):
            n, kind = struct.unpack_from("HH", buf, i)
            if n < 4:
                break
            out.append((kind & 0x3FFF, buf[i + 4: i + n]))
            i += (n + 3) & ~3
        return out

    def request(self, family, cmd, attrs):
        self.seq += 1
        body = struct.pack("BBH", cmd, 1, 0) + attrs
        self.sock.send(struct.pack("IHHII", 16 + len(body), family, 1, self.seq, 0) + body)
        data = self.sock.recv(65536)
        n, kind = struct.unpack_from("IH", data, 0)
        if kind == 2:  # NLMSG_ERROR
            raise OSError(-struct.unpack_from("i", data, 16)[0], "taskstats")
        return self.parse(data[20:n])

    def cpu_ns(self, tgid):
        for kind, val in self.request(self.family, 1, self.nla(2, struct.pack("I", tgid))):
            if kind == 5:  # TASKSTATS_TYPE_AGGR_TGID
                for k2, v2 in self.parse(val):
                    if k2 == 3:  # TASKSTATS_TYPE_STATS: cpu_run_virtual_total at offset 72
                        return struct.unpack_from("Q", v2, 72)[0]
        return None


def ctxt(pid):
    total = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return 0
    for tid in tids:
        for line in (read("/proc/%d/task/%s/status" % (pid, tid)) or "").splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def tree(root):
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat_fields(int(name))
            if st:
                children.setdefault(st["ppid"], []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


def main():
    root = int(sys.argv[1])
    try:
        ts = Taskstats()
    except OSError:
        ts = None
    procs = []
    for pid in tree(root):
        st = stat_fields(pid)
        if st is None:
            continue
        kb = status_kb(pid)
        cpu = None
        if ts is not None:
            try:
                cpu = ts.cpu_ns(pid)
            except OSError:
                cpu = None
        procs.append({
            "pid": pid, "comm": st["comm"],
            "rss_kb": kb.get("VmRSS", 0), "hwm_kb": kb.get("VmHWM", 0),
            "pss_kb": kb.get("Pss", 0), "threads": kb.get("Threads", 0), "ctxt": ctxt(pid),
            "utime": st["utime"], "stime": st["stime"],
            "cutime": st["cutime"], "cstime": st["cstime"], "cpu_ns": cpu,
        })
    print(json.dumps({"time": time.time(), "root": root, "clk_tck": CLK_TCK, "procs": procs}))


if __name__ == "__main__":
    main()
