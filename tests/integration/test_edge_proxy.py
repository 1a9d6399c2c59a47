"""PROXY protocol in front of the edge: a trusted proxy's v1 and v2 headers
name the client that relay control and the broker's Received: header see; a
broken header is refused with 421; a peer outside --proxy-trusted is closed
without a word, whatever it sends."""

import re
import socket
import struct
import unittest

from harness import RawSmtp, StackTestCase, split_received

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def connect(port, source):
    c = RawSmtp.__new__(RawSmtp)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                      source_address=(source, 0))
    c.buf = b""
    return c


def v2_ipv4(src, sport, dst, dport):
    block = (socket.inet_aton(src) + socket.inet_aton(dst)
             + struct.pack("!HH", sport, dport))
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def v2_ipv6(src, sport, dst, dport):
    block = (socket.inet_pton(socket.AF_INET6, src)
             + socket.inet_pton(socket.AF_INET6, dst)
             + struct.pack("!HH", sport, dport))
    return V2_SIG + bytes([0x21, 0x21]) + struct.pack("!H", len(block)) + block


class EdgeProxyTest(StackTestCase):

    def start(self, mode, trusted):
        self.stack.write_config([])
        self.stack.start_broker()
        # Relaying is allowed for 192.0.2.0/24 only: a recipient outside
        # example.test shows whether the edge saw the proxied client.
        self.stack.start_edge([f"--proxy-protocol={mode}",
                               f"--proxy-trusted={trusted}",
                               "--trusted-networks=192.0.2.0/24"])
        return self.stack.edge.port

    def send_mail(self, c, rcpt):
        """A whole transaction; returns the queue id."""
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO proxied.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), (250, [
            "250 2.1.0 Ok"]))
        code, lines = c.cmd(f"RCPT TO:<{rcpt}>")
        if code != 250:
            return code, lines
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: proxied\r\n\r\nhello\r\n.\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        c.cmd("QUIT")
        return code, re.search(r"queued as (\S+)", lines[0]).group(1)

    def received_of(self, queue_id):
        envelope, message = self.stack.queued(queue_id)
        _, received = split_received(message)
        return envelope, received.decode()

    def test_v1_and_v2_from_a_trusted_proxy(self):
        port = self.start("any", "127.0.0.0/8")
        cases = [
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n", "[192.0.2.7]"),
            (v2_ipv4("192.0.2.8", 40000, "198.51.100.1", 25), "[192.0.2.8]"),
            (v2_ipv6("2001:db8::9", 1024, "2001:db8::1", 25),
             "[IPv6:2001:db8::9]"),
            (b"PROXY TCP6 2001:db8::a 2001:db8::1 1024 25\r\n",
             "[IPv6:2001:db8::a]"),
        ]
        for header, literal in cases:
            with self.subTest(literal=literal):
                c = connect(port, "127.0.0.1")
                c.send(header)
                # Relaying to example.net is allowed only for 192.0.2.0/24.
                rcpt = ("b@example.net" if literal.startswith("[192.0.2.")
                        else "b@example.test")
                code, queue_id = self.send_mail(c, rcpt)
                c.close()
                _, received = self.received_of(queue_id)
                self.assertIn(f"from proxied.example ({literal})", received)
        # The proxy's own address is in the log.
        self.assertIn("client=192.0.2.7:50000 proxy=127.0.0.1:",
                      self.stack.edge.log())

    def test_the_per_client_limit_counts_proxied_clients(self):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge(["--proxy-protocol=v1",
                               "--proxy-trusted=127.0.0.1/32",
                               "--max-sessions-per-client=1"])
        port = self.stack.edge.port

        def through_proxy(client):
            c = connect(port, "127.0.0.1")
            c.send(f"PROXY TCP4 {client} 198.51.100.1 40000 25\r\n".encode())
            return c

        first = through_proxy("192.0.2.1")
        self.assertEqual(first.reply()[0], 220)
        # Another client behind the same proxy has its own count.
        other = through_proxy("192.0.2.2")
        self.assertEqual(other.reply()[0], 220)
        again = through_proxy("192.0.2.1")
        self.assertEqual(again.reply(), (421, [
            "421 4.7.0 mx.example.test Error: too many sessions from your "
            "address"]))
        self.assertTrue(again.closed_by_peer())
        for c in (first, other):
            self.assertEqual(c.cmd("NOOP")[0], 250)
        for c in (first, other, again):
            c.close()

    def test_unknown_and_local_keep_the_proxy_address(self):
        port = self.start("any", "127.0.0.0/8")
        for header in (b"PROXY UNKNOWN\r\n",
                       V2_SIG + bytes([0x20, 0x00, 0, 0])):
            c = connect(port, "127.0.0.1")
            c.send(header)
            # 127.0.0.1 is not in --trusted-networks: no relaying.
            code, lines = self.send_mail(c, "b@example.net")
            self.assertEqual((code, lines), (554, [
                "554 5.7.1 Relay access denied"]))
            self.assertEqual(c.cmd("RCPT TO:<b@example.test>")[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"Subject: local\r\n\r\nx\r\n.\r\n")
            code, lines = c.reply()
            self.assertEqual(code, 250, lines)
            queue_id = re.search(r"queued as (\S+)", lines[0]).group(1)
            c.close()
            _, received = self.received_of(queue_id)
            self.assertIn("from proxied.example ([127.0.0.1])", received)

    def test_a_broken_or_missing_header_gets_421(self):
        port = self.start("v1", "127.0.0.1/32")
        for data in (b"EHLO client.example\r\n",
                     v2_ipv4("192.0.2.8", 40000, "198.51.100.1", 25),
                     b"PROXY TCP4 192.0.2.300 198.51.100.1 1 25\r\n"):
            c = connect(port, "127.0.0.1")
            c.send(data)
            self.assertEqual(c.reply(), (421, [
                "421 4.7.0 mx.example.test Error: bad PROXY header"]))
            self.assertTrue(c.closed_by_peer())
            c.close()
        self.assertIn("refused proxy 127.0.0.1", self.stack.edge.log())

    def test_an_untrusted_peer_is_closed(self):
        port = self.start("any", "127.0.0.2/32")
        c = connect(port, "127.0.0.1")
        c.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n")
        self.assertTrue(c.closed_by_peer())
        self.assertEqual(c.buf, b"")
        c.close()
        self.assertIn("refused a connection from 127.0.0.1: not a trusted "
                      "proxy", self.stack.edge.log())
        # The trusted proxy's header is taken.
        c = connect(port, "127.0.0.2")
        c.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n")
        code, queue_id = self.send_mail(c, "b@example.net")
        c.close()
        _, received = self.received_of(queue_id)
        self.assertIn("from proxied.example ([192.0.2.7])", received)


if __name__ == "__main__":
    unittest.main()
