"""The edge's slow-drip watchdog over a raw socket: a command line dripped
slower than --command-timeout-s allows and message content slower than
--data-min-rate are cut with 421 4.4.2 although bytes keep coming (the idle
timeout never fires); a client at normal speed is not affected."""

import ssl
import time
import unittest

from harness import RawSmtp, StackTestCase, make_cert


class EdgeWatchdogTest(StackTestCase):

    def start(self, extra=()):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge(["--command-timeout-s=2", "--data-min-rate=200",
                               "--data-rate-grace-s=1",
                               "--idle-timeout-s=60"] + list(extra))
        return self.stack.edge.port

    def test_command_line_dripped_too_slowly_over_tls(self):
        """The watchdog's 421 goes through the connection's one writer onto
        the TLS stream: a whole, readable TLS record after the replies
        before it, then the close."""
        cert, key = make_cert(self.workdir)
        c = RawSmtp(self.start([f"--tls-cert={cert}", f"--tls-key={key}"]))
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO c.example")[0], 250)
        self.assertEqual(c.cmd("STARTTLS")[0], 220)
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
        # Pipelined commands the edge answers, then a line it never
        # finishes; the replies are read only after the 421 was sent.
        c.send(b"EHLO c.example\r\n" + b"NOOP\r\n" * 50 + b"NOOP")
        replies = [c.reply() for _ in range(51)]
        self.assertEqual(replies[0][0], 250)
        self.assertEqual(replies[1:], [(250, ["250 2.0.0 Ok"])] * 50)
        self.assertEqual(c.reply(), (421, [
            "421 4.4.2 mx.example.test Error: command line too slow"]))
        self.assertTrue(c.closed_by_peer())
        c.close()

    def drip(self, c, data, pause_s, limit):
        """Sends `data` one octet at a time until the edge answers; at most
        `limit` octets. Returns what the edge said."""
        c.sock.settimeout(pause_s)
        for i, b in enumerate(data[:limit]):
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                got = c.sock.recv(4096)
            except TimeoutError:
                continue
            c.buf += got
            break
        c.sock.settimeout(30)
        return c.reply()

    def test_command_line_dripped_too_slowly(self):
        port = self.start()
        c = RawSmtp(port)
        self.assertEqual(c.reply()[0], 220)
        # 0.3 s per octet, the line needs 40 octets (12 s): the 2 s bound
        # ends it long before.
        code, lines = self.drip(
            c, b"EHLO a-client-that-drips.example.test\r\n", 0.3, 40)
        self.assertEqual((code, lines), (421, [
            "421 4.4.2 mx.example.test Error: command line too slow"]))
        self.assertTrue(c.closed_by_peer())
        c.close()
        self.assertIn("command line too slow", self.stack.edge.log())

    def at_data(self):
        """A session of a started stack, just past DATA's 354."""
        c = RawSmtp(self.start())
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO c.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<b@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        return c

    def test_data_dripped_too_slowly(self):
        c = self.at_data()
        # Each line is whole at once, so the command clock is not the one
        # that runs; 10 octets every 0.25 s is 40 octets/s, under 200.
        body = b"".join(b"line %04d\n" % i for i in range(200))
        c.sock.settimeout(0.25)
        answer = b""
        for i in range(0, len(body), 10):
            try:
                c.send(body[i:i + 10].replace(b"\n", b"\r\n"))
                answer = c.sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            break
        c.buf += answer
        c.sock.settimeout(30)
        self.assertEqual(c.reply(), (421, [
            "421 4.4.2 mx.example.test Error: message content too slow"]))
        self.assertTrue(c.closed_by_peer())
        c.close()
        self.assertEqual(self.stack.queue_ids(), [])

    def test_normal_speed_passes(self):
        c = self.at_data()
        # A quiet moment inside the content, shorter than the grace period,
        # and a pause between commands (idle, not a command in progress).
        c.send(b"Subject: calm\r\n\r\n")
        time.sleep(0.5)
        c.send((b"x" * 98 + b"\r\n") * 50 + b".\r\n")
        self.assertEqual(c.reply()[0], 250)
        time.sleep(2.5)
        self.assertEqual(c.cmd("NOOP")[0], 250)
        self.assertEqual(c.cmd("QUIT")[0], 221)
        c.close()


if __name__ == "__main__":
    unittest.main()
