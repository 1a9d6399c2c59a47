"""A next-hop MTA for tests of the broker's SMTP relay backend, built on
Debian's python3-aiosmtpd. It stores every message it accepts as
<out>/<n>.json (envelope) and <n>.eml (bytes as received, dot-unstuffed),
and answers by rules read from a JSON file at every command, so a test can
change them while it runs:

  {"defer_once": ["a@x"],   # 451 4.2.0 the first time, then accept
   "defer": ["b@x"],        # 451 4.2.0 every time
   "reject": ["c@x"],       # 550 5.1.1
   "reject_mail": false,    # 554 5.7.1 at MAIL FROM
   "ehlo_drop": ["8BITMIME"],  # EHLO keywords not offered
   "ehlo_add": ["DSN"],     # EHLO keywords offered besides aiosmtpd's
   "size": 1000,            # the SIZE limit offered
   "data_delay_ms": 300}    # wait this long before answering the final dot

DSN's parameters (RET, ENVID, NOTIFY, ORCPT) are taken only while "DSN" is
offered. Every MAIL and RCPT line is stored as received, in <n>.json's
"commands", with "active_at_mail" (transactions between MAIL and the end of
DATA at this one's MAIL, itself included) and "completed_before" (messages
stored before this one's MAIL). With --tls-cert/--tls-key it offers STARTTLS; with
--tls-broken its TLS allows only TLS 1.0 and 1.1, so every handshake with
a client that wants TLS 1.2 or later fails.

Writes its port to --port-file once it listens.
"""

import argparse
import asyncio
import json
import os
import re
import ssl

from aiosmtpd.smtp import SMTP

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--rules", required=True)
parser.add_argument("--port-file", required=True)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--tls-cert")
parser.add_argument("--tls-key")
parser.add_argument("--tls-broken", action="store_true")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
seen = set()
counter = [0]
# Transactions between MAIL and the end of DATA now, and messages stored.
active = [0]
completed = [0]


def rules():
    try:
        with open(args.rules) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


DSN_PARAM = re.compile(r"\s+(RET|ENVID|NOTIFY|ORCPT)=\S*", re.I)


def dsn_offered():
    return "DSN" in [k.upper() for k in rules().get("ehlo_add", [])]


class RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, keeping each MAIL and RCPT line as received and
    taking DSN's parameters while DSN is offered."""

    async def smtp_MAIL(self, arg):
        self.commands = [f"MAIL {arg}"]
        if not getattr(self, "in_transaction", False):
            self.in_transaction = True
            active[0] += 1
        self.active_at_mail = active[0]
        self.completed_before = completed[0]
        await super().smtp_MAIL(DSN_PARAM.sub("", arg or "")
                                if dsn_offered() else arg)

    async def smtp_RSET(self, arg):
        self.end_transaction()
        await super().smtp_RSET(arg)

    def end_transaction(self):
        if getattr(self, "in_transaction", False):
            self.in_transaction = False
            active[0] -= 1

    def connection_lost(self, exc):
        self.end_transaction()
        super().connection_lost(exc)

    async def smtp_RCPT(self, arg):
        getattr(self, "commands", []).append(f"RCPT {arg}")
        await super().smtp_RCPT(DSN_PARAM.sub("", arg or "")
                                if dsn_offered() else arg)


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname,
                          responses):
        session.host_name = hostname
        r = rules()
        drop = {k.upper() for k in r.get("ehlo_drop", [])}
        out = []
        for line in responses[:-1]:
            keyword = line[4:].split(" ")[0].upper()
            if keyword in drop:
                continue
            if keyword == "SIZE" and "size" in r:
                line = f"250-SIZE {r['size']}"
            out.append(line)
        for k in r.get("ehlo_add", []):
            out.append(f"250-{k}")
        out.append(responses[-1])
        return out

    async def handle_MAIL(self, server, session, envelope, address, options):
        if rules().get("reject_mail"):
            return "554 5.7.1 Sender refused by test rule"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        r = rules()
        if address in r.get("reject", []):
            return "550 5.1.1 No such user here"
        if address in r.get("defer", []):
            return "451 4.2.0 Mailbox busy, try later"
        if address in r.get("defer_once", []) and address not in seen:
            seen.add(address)
            return "451 4.2.0 Greylisted, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        delay = rules().get("data_delay_ms", 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        server.end_transaction()
        completed[0] += 1
        counter[0] += 1
        base = os.path.join(args.out, str(counter[0]))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        # Whole or not at all: a test may read it at any moment.
        with open(base + ".json.tmp", "w") as f:
            json.dump({"mail_from": envelope.mail_from,
                       "rcpt_tos": envelope.rcpt_tos,
                       "mail_options": envelope.mail_options,
                       "commands": getattr(server, "commands", []),
                       "active_at_mail": getattr(server, "active_at_mail", 0),
                       "completed_before": getattr(server, "completed_before",
                                                   0),
                       "tls": session.ssl is not None}, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Ok: stored"


def tls_context():
    if not args.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_broken:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


async def main():
    loop = asyncio.get_running_loop()
    tls = tls_context()
    server = await loop.create_server(
        lambda: RecordingSMTP(Handler(), decode_data=False,
                              enable_SMTPUTF8=True, tls_context=tls,
                              data_size_limit=100 * 1024 * 1024),
        "127.0.0.1", args.port, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.rename(tmp, args.port_file)
    async with server:
        await server.serve_forever()

asyncio.run(main())
