"""A private Postfix instance for integration tests (Debian's postfix).

Everything lives under the test's directory: configuration, queue, data,
delivered mail and the log. The instance runs `postfix start-fg`, so its
master is a child of the test and is stopped by PID like every other
process. Two roles:

  - next hop: an smtpd on 127.0.0.1:<port> that accepts mail for the given
    domains and delivers it into one Maildir (`delivered()` reads it);
  - client: an smtpd that takes mail from the test and relays everything to
    a relay host (Postfix's own SMTP client talking to the edge).

Postfix binds a fixed port from master.cf, so `free_port()` picks one the
kernel had free a moment ago.
"""

import email.parser
import email.policy
import grp
import os
import pwd
import signal
import socket
import subprocess

from harness import START_TIMEOUT_S, tcp_ready, wait_for

POSTFIX = "/usr/sbin/postfix"

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix  - - n 1000? 1 tlsmgr
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix:
    """One Postfix instance; the same interface as harness.Process."""

    def __init__(self, workdir, name, port=None, domains=("example.test",),
                 relayhost=None, main=None):
        self.name = name
        self.home = os.path.join(workdir, name)
        self.etc = os.path.join(self.home, "etc")
        self.maildir = os.path.join(self.home, "mail", "inbox")
        self.log_path = os.path.join(self.home, "maillog")
        self.port = port or free_port()
        self.proc = None
        user = pwd.getpwnam("postfix")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(self.home, "queue"),
            "data_directory": os.path.join(self.home, "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"{name}.postfix.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.home,
            "smtputf8_enable": "yes",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Retry quickly: tests wait seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }
        if relayhost:
            # Everything goes to the relay host, whatever the domain.
            settings.update({
                "relayhost": relayhost,
                "relay_domains": "",
                "smtpd_relay_restrictions":
                    "permit_mynetworks, reject_unauth_destination",
                "smtp_host_lookup": "native",
                "smtp_dns_support_level": "disabled",
                "disable_dns_lookups": "yes",
            })
        else:
            settings.update({
                "virtual_mailbox_domains": " ".join(domains),
                "virtual_mailbox_base": os.path.join(self.home, "mail"),
                "virtual_mailbox_maps": "static:inbox/",
                "virtual_uid_maps": f"static:{user.pw_uid}",
                "virtual_gid_maps": f"static:{user.pw_gid}",
                "virtual_minimum_uid": str(user.pw_uid),
            })
        settings.update(main or {})
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(os.path.join(self.home, "queue"), exist_ok=True)
        os.makedirs(os.path.join(self.home, "data"), exist_ok=True)
        os.chown(os.path.join(self.home, "data"), user.pw_uid, user.pw_gid)
        os.makedirs(os.path.join(self.home, "mail"), exist_ok=True)
        os.chown(os.path.join(self.home, "mail"), user.pw_uid, user.pw_gid)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        # The instance's own directories must be reachable by the postfix
        # user (the test directory is private to root by default).
        for d in (workdir, self.home):
            os.chmod(d, 0o755)
        grp.getgrnam("postdrop")  # fails early if the package is missing

    def start(self):
        log = open(self.log_path + ".stdout", "ab")
        self.proc = subprocess.Popen(
            [POSTFIX, "-c", self.etc, "start-fg"], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"postfix {self.name} exited with "
                    f"{self.proc.returncode}:\n{self.log()}")
            return tcp_ready(self.port)
        wait_for(ready, START_TIMEOUT_S, f"postfix {self.name} accepting")
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def master_pid(self):
        try:
            with open(os.path.join(self.home, "queue", "pid",
                                   "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, sig=signal.SIGTERM, timeout_s=15.0):
        if not self.running():
            return
        # `postfix start-fg` waits for its master; the master stops its
        # children when it gets SIGTERM (SIGKILL leaves them to exit alone).
        pid = self.master_pid()
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        wait_for(lambda: not tcp_ready(self.port), timeout_s,
                 f"postfix {self.name} to close its port")

    def kill(self):
        self.stop(signal.SIGKILL)

    def reload(self):
        """`postfix reload`: daemons start again and read their tables."""
        subprocess.run([POSTFIX, "-c", self.etc, "reload"], check=True,
                       capture_output=True, timeout=60)

    def log(self):
        text = ""
        for path in (self.log_path, self.log_path + ".stdout"):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()
            except FileNotFoundError:
                pass
        return text

    def delivered(self):
        """[(headers as an email.message.Message, raw bytes)] from the
        instance's Maildir, oldest first."""
        out = []
        new = os.path.join(self.maildir, "new")
        if not os.path.isdir(new):
            return out
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                raw = f.read()
            out.append((parser.parsebytes(raw, headersonly=True), raw))
        return out

    def queue_empty(self):
        """True when the instance holds no mail in its queue."""
        queue = os.path.join(self.home, "queue")
        for sub in ("incoming", "active", "deferred", "maildrop"):
            for _, _, files in os.walk(os.path.join(queue, sub)):
                if files:
                    return False
        return True
