"""Pieces the comparison harness (compare.py) and the scale probes
(scale.py) share: CPU and peak memory of a process tree from /proc, the
next hop (Postfix's smtp-sink writing each message to a file), OpenDKIM on a
UNIX socket, an RSA-2048 key with its DNS record for python3-dkim, and a
small SMTP client that times end-of-data -> 250. Loopback only; every wait
is bounded."""

import base64
import glob
import os
import socket
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def stat_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def name_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        name = os.path.basename(argv0)
        if name.startswith("python"):
            return "python"
        return name or "?"
    except OSError:
        return "?"


def hwm_kb(pid):
    """Peak resident set (VmHWM) in KiB, or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE // 1024
    except OSError:
        return 0


def tree(roots):
    """`roots` and all their descendants, alive now."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                children.setdefault(int(stat_of(d)[1]), []).append(int(d))
            except OSError:
                pass
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo += children.get(p, [])
    return out


class Sampler:
    """Samples a process tree every `period` seconds: each process's own
    CPU (utime + stime), its reaped children's (cutime + cstime) and its
    peak resident set. Processes that exit between samples are accounted
    through their parent's reaped-children time (Postfix's master reaps
    its smtpd and cleanup processes)."""

    def __init__(self, roots, period=0.2):
        self.roots = list(roots)
        self.period = period
        self.first = {}   # pid -> (self ticks, children ticks) at first sight
        self.last = {}    # pid -> (self ticks, children ticks) last seen
        self.names = {}
        self.hwm = {}
        self.stop_event = threading.Event()
        self.sample(initial=True)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self, initial=False):
        for pid in tree(self.roots):
            try:
                f = stat_of(pid)
            except OSError:
                continue
            own = int(f[11]) + int(f[12])
            reaped = int(f[13]) + int(f[14])
            if pid not in self.first:
                # Born during the run: everything it spent is the run's.
                self.first[pid] = (own, reaped) if initial else (0, 0)
                self.names[pid] = name_of(pid)
            self.last[pid] = (own, reaped)
            self.hwm[pid] = max(self.hwm.get(pid, 0), hwm_kb(pid))

    def loop(self):
        while not self.stop_event.wait(self.period):
            self.sample()

    def finish(self):
        """{name: cpu seconds}, total cpu seconds, {name: peak KiB}."""
        self.stop_event.set()
        self.thread.join()
        self.sample()
        alive = tree(self.roots)
        per = {}
        reaped = 0
        seen_dead = 0
        for pid, (own, kids) in self.last.items():
            own0, kids0 = self.first[pid]
            name = self.names[pid]
            per[name] = per.get(name, 0) + own - own0
            reaped += kids - kids0
            if pid not in alive:
                seen_dead += own
        # Reaped children's whole CPU, less what the samples already saw
        # of them: the tail between their last sample and their exit.
        tail = max(0, reaped - seen_dead)
        if tail:
            per["(exited)"] = per.get("(exited)", 0) + tail
        per = {k: v / TICKS for k, v in per.items()}
        peak = {}
        for pid, kb in self.hwm.items():
            name = self.names[pid]
            peak[name] = max(peak.get(name, 0), kb)
        total_peak = sum(self.hwm.values())
        return per, sum(per.values()), peak, total_peak


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")


def tcp_ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port; with `dump`, each
    message goes to a file there (the run counts and verifies them)."""

    def __init__(self, workdir, dump=True, backlog=256):
        self.port = free_port()
        self.dump = os.path.join(workdir, "delivered") if dump else None
        argv = ["/usr/sbin/smtp-sink"]
        if os.geteuid() == 0:
            argv += ["-u", "postfix"]
        if self.dump:
            os.makedirs(self.dump)
            os.chmod(self.dump, 0o777)
            argv += ["-d", os.path.join(self.dump, "%M.")]
        argv += [f"127.0.0.1:{self.port}", str(backlog)]
        self.log = open(os.path.join(workdir, "smtp-sink.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: tcp_ready(self.port), 10, "smtp-sink listening")

    @property
    def pid(self):
        return self.proc.pid

    def files(self):
        return glob.glob(os.path.join(self.dump, "*")) if self.dump else []

    def clear(self):
        for path in self.files():
            os.unlink(path)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class DkimKey:
    """One RSA-2048 key; `dns(name)` answers python3-dkim's TXT query for
    <selector>._domainkey.<domain>."""

    def __init__(self, workdir, selector="bench", domain="example.test"):
        self.selector = selector
        self.domain = domain
        self.path = os.path.join(workdir, "dkim.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", self.path],
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        os.chmod(self.path, 0o644)
        der = subprocess.run(["openssl", "pkey", "-in", self.path, "-pubout",
                              "-outform", "DER"], check=True,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout
        self.record = (b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))

    def dns(self, name, timeout=5):
        want = f"{self.selector}._domainkey.{self.domain}."
        if name.decode().rstrip(".") + "." == want:
            return self.record
        return None


def verify_dumps(files, key):
    """(signed and verified, total): every file is one message as
    smtp-sink wrote it (its own X-* lines first, then the message)."""
    import dkim  # Debian's python3-dkim
    ok = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        if b"\r\n" not in data:
            data = data.replace(b"\n", b"\r\n")
        if b"DKIM-Signature:" not in data:
            continue
        try:
            if dkim.verify(data, dnsfunc=key.dns):
                ok += 1
        except dkim.DKIMException:
            pass
    return ok, len(files)


def start_opendkim(workdir, key):
    from milter_tools import External  # tests/integration
    sock = os.path.join(workdir, "opendkim.sock")
    conf = os.path.join(workdir, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(f"""Mode s
Domain {key.domain}
Selector {key.selector}
KeyFile {key.path}
Socket local:{sock}
UMask 000
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
RequireSafeKeys false
Background no
Syslog no
PidFile {os.path.join(workdir, "opendkim.pid")}
""")
    return External("opendkim", ["/usr/sbin/opendkim", "-f", "-x", conf],
                    workdir, sock).start()


def message_body(size):
    """Headers and a body of about `size` octets, CRLF lines."""
    head = ("From: <bench@example.test>\r\nTo: <rcpt@example.test>\r\n"
            "Subject: latency probe\r\n"
            "Date: Tue, 01 Dec 2026 00:00:00 +0000\r\n"
            "Message-ID: <{id}@bench.example.test>\r\n\r\n")
    line = "x" * 76 + "\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


class LatencyClient:
    """`sessions` threads, each sending messages over a new connection
    per message and timing the final dot -> 250. Returns sorted seconds."""

    def __init__(self, port, size, rcpt="rcpt@example.test"):
        self.port = port
        self.size = size
        self.rcpt = rcpt
        self.lock = threading.Lock()
        self.samples = []
        self.errors = []
        self.seq = 0

    def reply(self, f):
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line[3:4] != b"-":
                return int(line[:3])

    def one(self):
        with self.lock:
            self.seq += 1
            n = self.seq
        data = message_body(self.size).format(id=n).encode()
        with socket.create_connection(("127.0.0.1", self.port), 30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = s.makefile("rb")
            steps = [None, b"EHLO client.example.net\r\n",
                     b"MAIL FROM:<bench@example.test>\r\n",
                     f"RCPT TO:<{self.rcpt}>\r\n".encode(), b"DATA\r\n"]
            for i, cmd in enumerate(steps):
                if cmd:
                    s.sendall(cmd)
                code = self.reply(f)
                if code >= 400:
                    raise RuntimeError(f"step {i}: {code}")
            s.sendall(data)
            t0 = time.perf_counter()
            s.sendall(b".\r\n")
            code = self.reply(f)
            t = time.perf_counter() - t0
            if code != 250:
                raise RuntimeError(f"end of data: {code}")
            s.sendall(b"QUIT\r\n")
            return t

    def run(self, sessions, count):
        left = [count]

        def worker():
            while True:
                with self.lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                try:
                    t = self.one()
                    with self.lock:
                        self.samples.append(t)
                except (OSError, RuntimeError) as e:
                    with self.lock:
                        self.errors.append(str(e))
        threads = [threading.Thread(target=worker) for _ in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        return sorted(self.samples)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1,
            max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]
