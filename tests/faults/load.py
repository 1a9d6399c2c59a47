"""The fault suite's steady load: client threads that each send one message
per SMTP session and record, per message, when it was tried, the reply code
(0 for a connection error) and the queue id of a 250."""

import re
import smtplib
import threading
import time

QUEUED = re.compile(rb"queued as (\S+)")


class Attempt:
    __slots__ = ("mid", "start", "end", "code", "text", "qid")

    def __init__(self, mid, start):
        self.mid, self.start = mid, start
        self.end, self.code, self.text, self.qid = None, None, "", None


class Load:
    """sessions: client threads; rate: messages a second over all threads
    (0: as fast as the stack accepts). port: a callable giving the edge's
    SMTP port (it may change only when the suite says so)."""

    def __init__(self, port, sessions, rate, tag, body_bytes=2000):
        self.port = port
        self.sessions = sessions
        self.rate = rate
        self.tag = tag
        self.body = ("\r\n".join(["y" * 76] * max(1, body_bytes // 78))
                     + "\r\n")
        self.attempts = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = []
        self.seq = 0
        self.started = None

    def _next(self):
        with self.lock:
            self.seq += 1
            n = self.seq
        if self.rate > 0:  # a steady schedule shared by every thread
            due = self.started + n / self.rate
            while not self.stop_event.is_set():
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                time.sleep(min(wait, 0.2))
        return n

    def _one(self, n):
        mid = f"{n}.{self.tag}@faults.example.test"
        a = Attempt(mid, time.monotonic())
        data = (f"Message-ID: <{mid}>\r\nSubject: fault suite {n}\r\n\r\n"
                + self.body).encode()
        s = None
        try:
            s = smtplib.SMTP("127.0.0.1", self.port(), timeout=30)
            code, resp = s.ehlo("load.example.test")
            if code == 250:
                code, resp = s.mail("load@example.test")
            if code == 250:
                code, resp = s.rcpt("sink@example.test")
            if code == 250:
                code, resp = s.data(data)
        except smtplib.SMTPResponseException as e:
            code, resp = e.smtp_code, e.smtp_error
        except (smtplib.SMTPException, OSError):
            code, resp = 0, b""
        finally:
            if s is not None:
                try:
                    s.close()  # no QUIT: its failure must not hide a 250
                except OSError:
                    pass
        a.end, a.code = time.monotonic(), code
        a.text = resp.decode("utf-8", "replace") if resp else ""
        if code == 250:
            m = QUEUED.search(resp)
            a.qid = m.group(1).decode() if m else None
        with self.lock:
            self.attempts.append(a)
        return code

    def _run(self):
        while not self.stop_event.is_set():
            n = self._next()
            if self.stop_event.is_set():
                break
            if self._one(n) != 250 and self.rate <= 0:
                time.sleep(0.05)  # no hot loop against a refused port

    def start(self):
        self.started = time.monotonic()
        for _ in range(self.sessions):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)

    def snapshot(self):
        with self.lock:
            return list(self.attempts)

    def acked_since(self, t):
        with self.lock:
            return sum(1 for a in self.attempts
                       if a.code == 250 and a.start >= t)
