"""A 50 MB message through a read-write sink: the broker's resident memory
grows by less than 64 MB (content is spooled and rewritten in chunks, never
held whole)."""

import re
import smtplib
import unittest

from harness import StackTestCase, split_received

SIZE = 50 * 1000 * 1000


def memory_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class LargeMessageTest(StackTestCase):

    def test_50mb_message_through_a_read_write_sink(self):
        self.start_default_stack()  # stamp sink, read-write, after COMMIT
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: large\r\n\r\n" + line * (SIZE // len(line))
        pid = self.stack.broker.pid
        before = memory_kb(pid, "VmRSS")
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=120) as s:
            s.ehlo("client.example.net")
            s.mail("alice@example.net", [f"SIZE={len(body)}"])
            s.rcpt("bob@example.test")
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            qid = re.search(rb"queued as (\S+)", resp).group(1).decode()
        _, queued = self.stack.queued(qid, timeout_s=60)
        stamp = f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()
        self.assertTrue(queued.startswith(stamp))
        queued, _ = split_received(queued, len(stamp))
        self.assertEqual(len(queued), len(stamp) + len(body))
        self.assertTrue(queued.endswith(line))
        peak = memory_kb(pid, "VmHWM")  # the broker's high-water mark
        grew_mb = (peak - before) / 1024
        print(f"broker RSS before {before / 1024:.1f} MB, peak "
              f"{peak / 1024:.1f} MB, grew {grew_mb:.1f} MB")
        self.assertLess(grew_mb, 64)


if __name__ == "__main__":
    unittest.main()
