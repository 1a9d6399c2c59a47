"""The fault suite's next-hop MTA, on Debian's python3-aiosmtpd: it accepts
every message and appends its Message-ID to <out>/delivered.log (one line
per delivery, written before the 250 leaves), so the suite can count what
reached the next hop and how often. --rules (JSON, read at every message)
may hold {"delay_ms": N}: each DATA waits that long before its answer (a
slow next hop that lets a backlog build up in the broker)."""

import argparse
import asyncio
import json
import os
import re

from aiosmtpd.smtp import SMTP

MESSAGE_ID = re.compile(rb"Message-ID: <([^>]+)>", re.IGNORECASE)

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--rules", required=True)
parser.add_argument("--port-file", required=True)
parser.add_argument("--listen", default="127.0.0.1:0")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
log_fd = os.open(os.path.join(args.out, "delivered.log"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def delay_s():
    try:
        with open(args.rules) as f:
            return float(json.load(f).get("delay_ms", 0)) / 1000.0
    except (OSError, ValueError):
        return 0.0


class Handler:
    async def handle_DATA(self, server, session, envelope):
        d = delay_s()
        if d > 0:
            await asyncio.sleep(d)
        m = MESSAGE_ID.search(envelope.original_content or b"")
        mid = m.group(1) if m else b"-"
        os.write(log_fd, mid + b"\n")
        return "250 2.0.0 Ok: delivered"


async def main():
    host, port = args.listen.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), decode_data=False, enable_SMTPUTF8=True,
                     data_size_limit=100 * 1024 * 1024),
        host, int(port), reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{bound}\n")
    os.rename(tmp, args.port_file)
    async with server:
        await server.serve_forever()

asyncio.run(main())
