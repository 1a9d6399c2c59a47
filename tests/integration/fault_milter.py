"""A milter for the failure tests, on the wire protocol itself (no
libmilter), so that it can misbehave exactly: it negotiates, continues every
step, and at end of message adds a header, or stalls, or closes the
connection, as the file named by --mode-file says ("ok", "stall", "drop").
It counts the connections it accepted in --count-file.

    /usr/bin/python3 fault_milter.py --socket=/tmp/x.sock --mode-file=... \
        --count-file=...
"""

import argparse
import os
import socket
import struct
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--socket", required=True)
p.add_argument("--mode-file", required=True)
p.add_argument("--count-file", required=True)
args = p.parse_args()

lock = threading.Lock()
connections = 0


def mode():
    try:
        with open(args.mode_file) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "ok"


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def send(conn, code, data=b""):
    conn.sendall(struct.pack(">I", len(data) + 1) + code + data)


def serve(conn):
    try:
        while True:
            (length,) = struct.unpack(">I", recv_exact(conn, 4))
            packet = recv_exact(conn, length)
            code, data = packet[:1], packet[1:]
            if code == b"O":
                # Version 6, add headers; every step answered.
                send(conn, b"O", struct.pack(">III", 6, 0x01, 0))
            elif code in (b"D", b"A", b"K"):
                continue  # macros, abort, quit-new-connection: no reply
            elif code == b"Q":
                return
            elif code == b"B" and mode() == "drop":
                return  # closes the connection mid-message
            elif code == b"E":
                m = mode()
                if m == "stall":
                    time.sleep(30)
                    return
                send(conn, b"h", b"X-Fault-Milter\0passed\0")
                send(conn, b"a")
            else:
                send(conn, b"c")
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def main():
    global connections
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.socket)
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        with lock:
            connections += 1
            with open(args.count_file + ".tmp", "w") as f:
                f.write(str(connections))
            os.replace(args.count_file + ".tmp", args.count_file)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
