"""The edge without a broker: 4xx, never 250; and it serves again once the
broker is back."""

import re
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


if __name__ == "__main__":
    unittest.main()
