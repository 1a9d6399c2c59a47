"""A tiny milter on Debian's python3-milter (libmilter): it refuses at RCPT
time every recipient whose local part starts with "refused", and logs each
CONNECT with the {daemon_name} and {client_port} macros it was sent, one
line each to --log, so a test can tell which bridge replica carried which
SMTP session.

    /usr/bin/python3 rcpt_milter.py --socket=/tmp/x.sock --log=/tmp/x.log
"""

import argparse
import os
import threading

import Milter

p = argparse.ArgumentParser()
p.add_argument("--socket", required=True)
p.add_argument("--log", required=True)
args = p.parse_args()
log_lock = threading.Lock()


def log(line):
    with log_lock:
        with open(args.log, "a") as f:
            f.write(line + "\n")


class RcptMilter(Milter.Base):

    def __init__(self):
        self.session = None

    def connect(self, hostname, family, hostaddr):
        self.session = (self.getsymval("{daemon_name}"),
                        self.getsymval("{client_port}"))
        log(f"connect {self.session[0]} {self.session[1]}")
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        local = to.strip("<>").split("@")[0]
        log(f"rcpt {self.session[0]} {self.session[1]} {to}")
        if local.startswith("refused"):
            self.setreply("550", "5.7.1", "Recipient refused by rcpt-milter")
            return Milter.REJECT
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Rcpt-Milter", f"seen by {self.session[0]}")
        return Milter.ACCEPT


def main():
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    Milter.factory = RcptMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("rcpt-milter", "unix:" + args.socket, 60)


main()
