"""A DNS server for tests of the relay's next-hop resolution, built on
Debian's python3-dnspython. Listens on 127.0.0.1, UDP and TCP on the same
port (the TCP listener also tells the harness it is up), and answers from
a JSON zone file read at every query:

  {"MX": {"relay.test.": [[10, "mx1.relay.test."]]},
   "A": {"mx1.relay.test.": ["127.0.0.1"]}}

Names not in the zone get NXDOMAIN; a name in the zone without records of
the asked type gets an empty answer (NODATA). With --silent it reads every
query and never answers (a resolver waits until its deadline). Each query
is appended to --log as "TYPE name".

Writes its port to --port-file once it listens.
"""

import argparse
import json
import os
import socket
import struct
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

parser = argparse.ArgumentParser()
parser.add_argument("--zone", required=True)
parser.add_argument("--log", required=True)
parser.add_argument("--port-file", required=True)
parser.add_argument("--silent", action="store_true")
args = parser.parse_args()
log_lock = threading.Lock()


def answer(wire):
    query = dns.message.from_wire(wire)
    q = query.question[0]
    qtype = dns.rdatatype.to_text(q.rdtype)
    name = q.name.to_text().lower()
    with log_lock, open(args.log, "a") as f:
        f.write(f"{qtype} {name}\n")
    if args.silent:
        return None
    try:
        with open(args.zone) as f:
            zone = json.load(f)
    except (OSError, ValueError):
        zone = {}
    reply = dns.message.make_response(query)
    known = any(name in records for records in zone.values())
    if not known:
        reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()
    values = zone.get(qtype, {}).get(name, [])
    if values:
        texts = [f"{v[0]} {v[1]}" if qtype == "MX" else v for v in values]
        reply.answer.append(dns.rrset.from_text_list(
            q.name, 60, "IN", qtype, texts))
    return reply.to_wire()


def serve_udp(sock):
    while True:
        wire, peer = sock.recvfrom(65535)
        try:
            out = answer(wire)
        except Exception:  # a query we cannot parse: no answer
            continue
        if out is not None:
            sock.sendto(out, peer)


def serve_tcp_client(conn):
    with conn:
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            wire = b""
            while len(wire) < n:
                chunk = conn.recv(n - len(wire))
                if not chunk:
                    return
                wire += chunk
            out = answer(wire)
            if out is not None:
                conn.sendall(struct.pack("!H", len(out)) + out)


def bind_pair(attempts=50):
    """A TCP listener on a port the kernel picks, and UDP on the same port
    (another process may hold that UDP port: then another pair)."""
    for _ in range(attempts):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen(16)
        return tcp, udp, port
    raise SystemExit("no free TCP and UDP port pair")


tcp, udp, port = bind_pair()
threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
tmp = args.port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{port}\n")
os.rename(tmp, args.port_file)
while True:
    conn, _ = tcp.accept()
    threading.Thread(target=serve_tcp_client, args=(conn,),
                     daemon=True).start()
