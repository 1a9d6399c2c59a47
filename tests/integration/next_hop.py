"""A next-hop MTA for tests of the broker's SMTP relay backend, built on
Debian's python3-aiosmtpd. It stores every message it accepts as
<out>/<n>.json (envelope) and <n>.eml (bytes as received, dot-unstuffed),
and answers by rules read from a JSON file at every command, so a test can
change them while it runs:

  {"defer_once": ["a@x"],   # 451 4.2.0 the first time, then accept
   "defer": ["b@x"],        # 451 4.2.0 every time
   "reject": ["c@x"],       # 550 5.1.1
   "reject_mail": false}    # 554 5.7.1 at MAIL FROM

Writes its port to --port-file once it listens.
"""

import argparse
import asyncio
import json
import os

from aiosmtpd.smtp import SMTP

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--rules", required=True)
parser.add_argument("--port-file", required=True)
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
seen = set()
counter = [0]


def rules():
    try:
        with open(args.rules) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Handler:
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
        counter[0] += 1
        base = os.path.join(args.out, str(counter[0]))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from,
                       "rcpt_tos": envelope.rcpt_tos,
                       "mail_options": envelope.mail_options}, f)
        return "250 2.0.0 Ok: stored"


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), decode_data=False, enable_SMTPUTF8=True,
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
