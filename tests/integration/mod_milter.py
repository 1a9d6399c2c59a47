"""A test milter on Debian's python3-milter (libmilter) that does, per
message, what its X-Test-Mode header asks, so that one test can drive every
answer and modification through the bridge:

    headers     add X-Added (at the end), insert X-Inserted at the top,
                change Subject, delete the 2nd X-Delete-Me
    body        replace the body (--body-size octets, in several chunks)
    rcpts       add <added@example.net> with NOTIFY=NEVER, add
                <plain@example.net>, delete <bob@example.net>
    sender      change the sender to <bounces@example.test>
    discard     answer discard
    quarantine  quarantine "held by mod-milter", accept
    reject      554 5.7.0 "Refused by mod-milter", reject
    tempfail    452 4.3.1 "Busy, mod-milter", tempfail
    progress N  send SMFIR_PROGRESS every --progress-every seconds for N
                seconds, then add X-Progress: done and accept
    stall N     sleep N seconds without progress, then accept

    /usr/bin/python3 mod_milter.py --socket=/tmp/x.sock
"""

import argparse
import os
import time

import Milter

p = argparse.ArgumentParser()
p.add_argument("--socket", required=True)
p.add_argument("--body-size", type=int, default=300000)
p.add_argument("--progress-every", type=float, default=0.5)
args = p.parse_args()


def new_body(size):
    line = b"replaced body line of the mod-milter, 0123456789\r\n"
    return (line * (size // len(line) + 1))[:size]


class ModMilter(Milter.Base):

    def __init__(self):
        self.mode = ""

    def envfrom(self, f, *params):
        self.mode = ""
        return Milter.CONTINUE

    def header(self, name, value):
        if name.lower() == "x-test-mode":
            self.mode = value.strip()
        return Milter.CONTINUE

    def eom(self):
        m, _, n = self.mode.partition(" ")
        if m == "headers":
            self.addheader("X-Added", "at the end")
            self.addheader("X-Inserted", "at the top", 0)
            self.chgheader("Subject", 1, "changed by mod-milter")
            self.chgheader("X-Delete-Me", 2, None)
        elif m == "body":
            data = new_body(args.body_size)
            for i in range(0, len(data), 65536):
                self.replacebody(data[i:i + 65536])
        elif m == "rcpts":
            self.addrcpt("<added@example.net>", "NOTIFY=NEVER")
            self.addrcpt("<plain@example.net>")
            self.delrcpt("<bob@example.net>")
        elif m == "sender":
            self.chgfrom("<bounces@example.test>")
        elif m == "discard":
            return Milter.DISCARD
        elif m == "quarantine":
            self.quarantine("held by mod-milter")
        elif m == "reject":
            self.setreply("554", "5.7.0", "Refused by mod-milter")
            return Milter.REJECT
        elif m == "tempfail":
            self.setreply("452", "4.3.1", "Busy, mod-milter")
            return Milter.TEMPFAIL
        elif m == "progress":
            end = time.monotonic() + float(n)
            while time.monotonic() < end:
                time.sleep(args.progress_every)
                self.progress()
            self.addheader("X-Progress", "done")
        elif m == "stall":
            time.sleep(float(n))
        return Milter.ACCEPT


def main():
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    Milter.factory = ModMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY
                     | Milter.ADDRCPT | Milter.ADDRCPT_PAR | Milter.DELRCPT
                     | Milter.CHGFROM | Milter.QUARANTINE)
    Milter.runmilter("mod-milter", "unix:" + args.socket, 600)


main()
