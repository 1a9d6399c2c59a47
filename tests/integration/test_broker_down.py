"""The edge without a broker: 4xx, never 250; and it serves again once the
broker is back, also when the broker is slow to answer a new connection."""

import re
import socket
import threading
import time
import unittest

from harness import RawSmtp, StackTestCase, wait_for


class BrokerDownTest(StackTestCase):

    def transaction(self, conn):
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        self.assertEqual(conn.cmd("MAIL FROM:<alice@example.net>")[0], 250)
        self.assertEqual(conn.cmd("RCPT TO:<bob@example.test>")[0], 250)

    def test_broker_killed_mid_session_gets_4xx_not_250(self):
        self.start_default_stack()
        conn = RawSmtp(self.stack.edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.transaction(conn)
        self.stack.broker.kill()
        code, lines = conn.cmd("DATA")
        if code == 354:
            conn.send(b"Subject: lost\r\n\r\nbody\r\n.\r\n")
            code, lines = conn.reply()
        self.assertTrue(400 <= code < 500, lines)
        self.assertRegex(lines[-1], r"^4\d\d[ -]4\.\d+\.\d+ ")
        conn.close()
        self.assertEqual(self.stack.queue_ids(), [])

    def test_new_session_while_broker_down_then_back(self):
        self.start_default_stack()
        broker_port = self.stack.broker.port
        self.stack.broker.kill()

        conn = RawSmtp(self.stack.edge.port)
        code, lines = conn.reply()
        self.assertEqual(code, 421, lines)
        self.assertIn("4.3.0", lines[0])
        self.assertTrue(conn.closed_by_peer())
        conn.close()
        self.assertTrue(self.stack.edge.running())

        # The broker comes back on the same address; the edge serves again.
        self.stack.start_broker(listen=f"127.0.0.1:{broker_port}")

        def delivered():
            conn = RawSmtp(self.stack.edge.port)
            try:
                if conn.reply()[0] != 220:
                    return None
                self.transaction(conn)
                self.assertEqual(conn.cmd("DATA")[0], 354)
                conn.send(b"Subject: back\r\n\r\nbody\r\n.\r\n")
                code, lines = conn.reply()
                self.assertNotEqual(code // 100, 5, lines)
                conn.cmd("QUIT")
                return lines[0] if code == 250 else None
            finally:
                conn.close()

        line = wait_for(delivered, 15, "a 250 after the broker came back")
        qid = re.search(r"queued as (\S+)", line).group(1)
        self.stack.queued(qid)

    def test_broker_slow_to_answer_a_new_connection_is_reached(self):
        # A broker that takes 1.5 s to answer a new connection (a busy
        # machine, a broker just restarted): the edge's connection attempt
        # waits for it instead of giving up and backing off forever.
        self.stack.write_config([])
        self.stack.start_broker()
        proxy = SlowProxy(self.stack.broker.port, delay_s=1.5)
        self.addCleanup(proxy.close)
        self.stack.start_edge([f"--broker=127.0.0.1:{proxy.port}",
                               "--broker-connect-timeout-ms=8000"])
        conn = RawSmtp(self.stack.edge.port)
        code, lines = conn.reply()
        self.assertEqual(code, 220, lines)
        self.transaction(conn)
        self.assertEqual(conn.cmd("DATA")[0], 354)
        conn.send(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
        code, lines = conn.reply()
        self.assertEqual(code, 250, lines)
        conn.close()
        self.assertGreaterEqual(proxy.connections, 1)


class SlowProxy:
    """A TCP relay on loopback that holds each new connection for delay_s
    before it opens the upstream one and copies bytes both ways."""

    def __init__(self, upstream_port, delay_s):
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(client)
            threading.Thread(target=self._serve, args=(client,),
                             daemon=True).start()

    def _serve(self, client):
        time.sleep(self.delay_s)
        if self.closed:
            return
        try:
            upstream = socket.create_connection(
                ("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        self.open.append(upstream)
        self.connections += 1
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b),
                             daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.sock.close()
        for s in self.open:
            s.close()


if __name__ == "__main__":
    unittest.main()
