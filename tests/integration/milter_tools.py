"""Real milters for the milter bridge's integration tests, each a private
instance under the test's temporary directory, listening on a unix socket
there (no port to race for), stopped by PID: Debian's OpenDKIM and rspamd,
and two small test milters (rcpt_milter.py on python3-milter,
fault_milter.py on the wire protocol)."""

import os
import shutil
import signal
import socket
import subprocess

from harness import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


def socket_ready(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class External:
    """A process that is not ours (a milter): argv, log file, its socket."""

    def __init__(self, name, argv, workdir, sock, env=None):
        self.name = name
        self.argv = argv
        self.sock = sock
        self.env = env
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc = None

    def start(self, timeout_s=30.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with "
                                     f"{self.proc.returncode}:\n{self.log()}")
            return socket_ready(self.sock)

        wait_for(ready, timeout_s, f"{self.name} socket {self.sock}")
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout_s=10.0):
        if not self.running():
            return
        # The milter's own children (rspamd's workers) are in its group,
        # which it leads: signal that group, by the PID we started.
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def python_milter(workdir, name, script, args):
    sock = os.path.join(workdir, f"{name}.sock")
    return External(name, ["/usr/bin/python3", os.path.join(HERE, script),
                           f"--socket={sock}"] + list(args), workdir, sock)


def opendkim(workdir, domain, selector, key_path):
    """OpenDKIM in signing mode for `domain` with one key."""
    os.chmod(key_path, 0o600)
    sock = os.path.join(workdir, "opendkim.sock")
    conf = os.path.join(workdir, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(f"""Mode s
Domain {domain}
Selector {selector}
KeyFile {key_path}
Socket local:{sock}
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
RequireSafeKeys false
Background no
Syslog no
LogWhy yes
PidFile {os.path.join(workdir, "opendkim.pid")}
""")
    return External("opendkim", ["/usr/sbin/opendkim", "-f", "-x", conf],
                    workdir, sock)


def rspamd(workdir, cache_dir):
    """rspamd's proxy worker as a milter (self-scan, no Redis), with its own
    config, run and log directories; its database directory is `cache_dir`,
    which keeps the compiled Hyperscan databases between tests (they take
    long to build)."""
    d = os.path.join(workdir, "rspamd")
    os.makedirs(os.path.join(d, "local.d"), exist_ok=True)
    os.makedirs(cache_dir, exist_ok=True)
    sock = os.path.join(d, "rspamd.sock")
    conf = os.path.join(d, "rspamd.conf")
    with open(conf, "w") as f:
        f.write(f"""
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{ timeout = 1s; retransmits = 1; }}
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "rspamd_proxy" {{
    bind_socket = "{sock} mode=0600";
    milter = yes;
    timeout = 60s;
    count = 1;
    upstream "local" {{ default = yes; self_scan = yes; }}
}}
""")
    # The headers an operator sees (rspamd skips them for local clients,
    # and every test client is local).
    with open(os.path.join(d, "local.d", "milter_headers.conf"), "w") as f:
        f.write('extended_spam_headers = true;\nskip_local = false;\n'
                'skip_authenticated = false;\n'
                'use = ["x-spamd-result", "x-rspamd-server", '
                '"x-rspamd-queue-id", "x-rspamd-action"];\n')
    # Nothing that needs Redis or the network.
    with open(os.path.join(d, "local.d", "redis.conf"), "w") as f:
        f.write("enabled = false;\n")
    argv = ["/usr/bin/rspamd", "-f", "-i", "-u", "root", "-g", "root",
            "-c", conf]
    for var, value in (("CONFDIR", "/etc/rspamd"), ("LOCAL_CONFDIR", d),
                       ("RUNDIR", d), ("DBDIR", cache_dir), ("LOGDIR", d)):
        argv += ["--var", f"{var}={value}"]
    return External("rspamd", argv, workdir, sock)


def have(path):
    return os.path.exists(path) or shutil.which(path) is not None
