"""The faults, one function each: inject(stack, rng) does the damage and
undoes it (restarts, resumes, restores), in bounded time. Each returns a
short note for the table. Cleanups that must run whatever happens (firewall
rules, mounts) are registered in CLEANUPS and run by the suite."""

import os
import signal
import subprocess
import time

from stack import LEASE_MS, PRE_DEADLINE_MS

CLEANUPS = []


def _iptables(action, port):
    """DROP (action -I) or no longer drop (action -D) every loopback packet
    to or from `port`."""
    for direction in ("--dport", "--sport"):
        subprocess.run(["iptables", action, "INPUT", "-i", "lo", "-p", "tcp",
                        direction, str(port), "-j", "DROP"],
                       check=action == "-I", capture_output=True, timeout=30)


def cut_port(port, hold_s):
    undo = (lambda: _iptables("-D", port))
    CLEANUPS.append(undo)
    _iptables("-I", port)
    try:
        time.sleep(hold_s)
    finally:
        undo()
        CLEANUPS.remove(undo)


def pre_sink_killed(stack, rng):
    """SIGKILL the pre-COMMIT sink while calls are in flight; start it again
    on its port a second later."""
    stack.pre.restart(down_s=1.0)
    return "SIGKILL, restarted after 1 s"


def pre_sink_hangs(stack, rng):
    hold = PRE_DEADLINE_MS / 1000.0 + 2.0
    stack.pre.signal(signal.SIGSTOP)
    time.sleep(hold)
    stack.pre.signal(signal.SIGCONT)
    return f"SIGSTOP {hold:.0f} s (deadline {PRE_DEADLINE_MS} ms)"


def pre_sink_garbage(stack, rng):
    stack.set_pre_mode("garbage")
    time.sleep(8.0)
    stack.set_pre_mode("ok")
    return "8 s of bad verdicts, codes and huge edits"


def post_sink_leases_stopped(stack, rng):
    hold = LEASE_MS / 1000.0 * 2.5
    stack.post.signal(signal.SIGSTOP)
    time.sleep(hold)
    stack.post.signal(signal.SIGCONT)
    return f"SIGSTOP {hold:.0f} s (lease {LEASE_MS} ms)"


def broker_killed(stack, rng):
    broker = stack.brokers[0]
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        broker.restart(down_s=rng.uniform(0.0, 0.5))
    return "SIGKILL x3 at random moments"


def edge_killed(stack, rng):
    stack.edge.restart(down_s=0.5)
    return "SIGKILL, restarted after 0.5 s"


def next_hop_stopped(stack, rng):
    stack.next_hop.restart(down_s=8.0)
    return "killed, started after 8 s"


def spool_full(stack, rng):
    """Fills the tmpfs the broker's spool lives on, holds it full, frees it.
    Notes the answers clients got while it was full."""
    filler = os.path.join(stack.spool_root, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    end = time.monotonic() + 6.0
    try:
        while time.monotonic() < end:  # take whatever the broker frees
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError:
                    pass
            time.sleep(0.05)
    finally:
        os.close(fd)
        os.unlink(filler)
    return "tmpfs full for 6 s"


def sink_link_cut(stack, rng):
    cut_port(stack.pre.port, 6.0)
    return "broker<->pre-sink dropped 6 s (iptables on lo)"


def edge_broker_link_cut(stack, rng):
    cut_port(stack.brokers[0].port, 6.0)
    return "edge<->broker dropped 6 s (iptables on lo)"


def one_of_two_brokers_killed(stack, rng):
    b = stack.brokers[0]
    b.kill()
    time.sleep(10.0)
    b.check()  # its death was planned: not an unplanned one
    b.died.clear()
    b.planned_restarts += 1
    b.start()  # so that what it committed reaches the next hop
    return "broker1 SIGKILL, broker2 serves 10 s, broker1 restarted"


# (number, name, function, stack options, in the CI subset)
FAULTS = [
    (1, "pre-COMMIT sink killed mid-call", pre_sink_killed, {}, True),
    (2, "sink SIGSTOP past its deadline", pre_sink_hangs, {}, True),
    (3, "sink answers garbage", pre_sink_garbage, {}, True),
    (4, "post-COMMIT sink stopped past its lease", post_sink_leases_stopped,
     {"post": "reader"}, False),
    (5, "broker SIGKILL x3, same spool", broker_killed, {}, True),
    (6, "edge SIGKILL", edge_killed, {}, True),
    (7, "next hop stopped, started", next_hop_stopped, {}, False),
    (8, "spool disk full", spool_full, {"tmpfs_mb": 48}, True),
    (9, "broker<->sink link cut", sink_link_cut, {}, True),
    (10, "edge<->broker link cut", edge_broker_link_cut, {}, True),
    (11, "one of two brokers killed", one_of_two_brokers_killed,
     {"brokers": 2}, False),
]
