#!/usr/bin/env python3
"""Runs a command and prints its wall time and peak memory as one JSON line.

    peakmem.py [--stdout FILE] [--stderr FILE] [--interval S] [--timeout S] [--fsync FILE]
               [--] CMD [ARG...]

Prints {"wall_s", "hwm_kb", "anon_peak_kb", "rc", "samples", "exit_sampled", "traced",
"timed_out"}:

  wall_s        from just before fork to the reaping of the command (monotonic clock);
                with --fsync FILE, FILE is then fsync'd and that time is included
                ("cmd_wall_s": the command alone, "fsync_s": the fsync), so that a tool
                that does not make its output durable is timed like one that does
  hwm_kb        peak resident set size: the largest VmHWM seen in /proc/PID/status
  anon_peak_kb  peak anonymous resident memory: the largest RssAnon seen (heap, stacks,
                anonymous mappings; not the page cache pages of mapped files)
  rc            exit status (128 + N if killed by signal N); with --timeout, a command
                still running after S seconds is killed (SIGKILL, "timed_out": true)

/proc/PID/status is read every --interval seconds (default 0.005). The command runs
traced (ptrace, PTRACE_O_TRACEEXIT) so that it stops once more on its way out, with its
memory still mapped: the last sample is taken there, and a command shorter than the
interval is measured too ("exit_sampled": true). Only the command's own process is
measured, not processes it starts. Without ptrace (not permitted), it polls only.
"""
import ctypes
import json
import os
import signal
import sys
import time

PTRACE_TRACEME, PTRACE_CONT, PTRACE_SETOPTIONS = 0, 7, 0x4200
PTRACE_O_TRACEEXIT, PTRACE_O_EXITKILL = 0x40, 0x100000
PTRACE_EVENT_EXIT = 6


def main(argv):
    out = err = None
    interval = 0.005
    timeout = None
    fsync_path = None
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt == "--":
            break
        if opt == "--stdout":
            out = argv.pop(0)
        elif opt == "--stderr":
            err = argv.pop(0)
        elif opt == "--interval":
            interval = float(argv.pop(0))
        elif opt == "--timeout":
            timeout = float(argv.pop(0))
        elif opt == "--fsync":
            fsync_path = argv.pop(0)
        else:
            sys.exit(f"peakmem.py: unknown option {opt}")
    if not argv:
        sys.exit(__doc__)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long

    # The child reports whether it is traced, then execs; the pipe closes on exec, so its
    # end of file says the command is running (samples before that would be of this
    # script's forked copy).
    rd, wr = os.pipe2(os.O_CLOEXEC)
    # SIGCHLD (the command stopped or exited) ends the wait between two samples at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            os.close(rd)
            if out:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
            if err:
                fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 2)
            traced = libc.ptrace(PTRACE_TRACEME, 0, None, None) == 0  # if refused: untraced
            os.write(wr, b"T" if traced else b"U")
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"peakmem.py: {argv[0]}: {e}\n".encode())
        os._exit(127)

    os.close(wr)
    traced = False
    while True:
        b = os.read(rd, 1)
        if not b:
            break
        traced = b == b"T"
    os.close(rd)
    hwm = anon = samples = 0
    exit_sampled = configured = timed_out = False

    def sample():
        nonlocal hwm, anon, samples
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
                    elif line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
            samples += 1
        except (OSError, ValueError, IndexError):
            pass

    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == 0:
            if timeout is not None and not timed_out and time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                timed_out = True
            if configured or not traced:
                sample()
            signal.sigtimedwait([signal.SIGCHLD], interval)
            continue
        if os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGTRAP and status >> 16 == PTRACE_EVENT_EXIT:
                sample()
                exit_sampled = True
                sig = 0
            elif sig == signal.SIGTRAP and not configured:  # stopped at exec
                libc.ptrace(PTRACE_SETOPTIONS, pid, None, ctypes.c_void_p(PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL))
                configured = True
                sig = 0
            libc.ptrace(PTRACE_CONT, pid, None, ctypes.c_void_p(sig))
            continue
        cmd_wall = time.monotonic() - t0
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        if not samples:  # untraced and too short to sample: the kernel's counter, which
            hwm = ru.ru_maxrss  # also holds the forked copy's peak before the exec
        break
    fsync_s = 0.0
    if fsync_path and rc == 0 and os.path.isfile(fsync_path):
        t1 = time.monotonic()
        fd = os.open(fsync_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        fsync_s = time.monotonic() - t1
    wall = cmd_wall + fsync_s
    print(json.dumps({"wall_s": round(wall, 4), "cmd_wall_s": round(cmd_wall, 4), "fsync_s": round(fsync_s, 4), "hwm_kb": hwm, "anon_peak_kb": anon, "rc": rc,
                      "samples": samples, "exit_sampled": exit_sampled, "traced": traced,
                      "timed_out": timed_out}), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
