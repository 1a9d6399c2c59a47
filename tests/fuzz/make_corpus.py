#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets in tests/fuzz/, one directory
each under corpus/: session (realistic client transcripts, each behind the
target's 8-octet header: flags, bound events, how often sinks replace
replies, seed), proxy, config, verdict, content and session_stream. The
protobuf seeds need the generated Python modules of a build:
  /usr/bin/python3 tests/fuzz/make_corpus.py [build/dev/python]
Run it again after changing it; the files are committed."""

import base64
import os
import struct
import sys

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
HERE = os.path.join(CORPUS, "session")

STARTTLS, AUTH, TRUSTED, ACCEPTED, SMALL, DRAIN, LOSE, EARLY = (
    1, 2, 4, 8, 16, 32, 64, 128)
ALL_EVENTS = 0x7ffe
XSTATUS = 0x8000


def header(flags, bound=0, replace=0, seed=1):
    return (bytes([flags]) + struct.pack("<H", bound) + bytes([replace])
            + struct.pack(">I", seed))


def b64(s):
    return base64.b64encode(s.encode()).decode()


MSG = ("From: Alice <alice@example.net>\r\nTo: bob@example.test\r\n"
       "Subject: seed\r\n\r\nfirst line\r\n..a stuffed dot line\r\n"
       "last line\r\n.\r\n")

SEEDS = {
    "plain": (header(ACCEPTED),
              "EHLO client.example.net\r\nMAIL FROM:<alice@example.net>\r\n"
              "RCPT TO:<bob@example.test>\r\nDATA\r\n" + MSG + "QUIT\r\n"),
    "helo_many_commands": (
        header(ACCEPTED | TRUSTED, bound=ALL_EVENTS, seed=7),
        "HELO c\r\nNOOP\r\nVRFY bob\r\nHELP\r\nRSET\r\n"
        "MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<x@elsewhere.test>"
        "\r\nDATA\r\n" + MSG + "MAIL FROM:<a@b.example>\r\nRSET\r\nQUIT\r\n"),
    "pipelined_two_messages": (
        header(ACCEPTED, seed=3),
        "EHLO c.example\r\nMAIL FROM:<a@example.net> SIZE=120 BODY=8BITMIME"
        "\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
        + MSG + "MAIL FROM:<a@example.net>\r\nRCPT TO:<d@example.test>\r\n"
        "DATA\r\n.\r\nQUIT\r\n"),
    "starttls_auth_plain": (
        header(STARTTLS | AUTH | ACCEPTED, seed=11),
        "EHLO c.example\r\nSTARTTLS\r\nEHLO c.example\r\n"
        "AUTH PLAIN " + b64("\0alice\0secret") + "\r\n"
        "MAIL FROM:<alice@example.net> AUTH=<>\r\n"
        "RCPT TO:<far@elsewhere.test>\r\nDATA\r\n" + MSG + "QUIT\r\n"),
    "auth_login_exchange": (
        header(STARTTLS | AUTH, bound=1 << 5, seed=12),
        "EHLO c.example\r\nSTARTTLS\r\nEHLO c.example\r\nAUTH LOGIN\r\n"
        + b64("alice") + "\r\n" + b64("wrong") + "\r\nAUTH LOGIN "
        + b64("alice") + "\r\n" + b64("secret") + "\r\nAUTH PLAIN\r\n*\r\n"
        "AUTH PLAIN =\r\nAUTH CRAM-MD5\r\nQUIT\r\n"),
    "bdat_chunks": (
        header(ACCEPTED, bound=1 << 9, seed=5),
        "EHLO c.example\r\nMAIL FROM:<a@example.net>\r\n"
        "RCPT TO:<b@example.test>\r\nBDAT 12\r\nSubject: x\r\n"
        "BDAT 9 LAST\r\n\r\nbody\r\n\r\nMAIL FROM:<a@example.net>\r\n"
        "RCPT TO:<b@example.test>\r\nBDAT 3\r\na\rbBDAT 0 LAST\r\n"
        "BDAT x\r\nDATA\r\nQUIT\r\n"),
    "smtputf8_dsn": (
        header(ACCEPTED, seed=9),
        "EHLO c.example\r\nMAIL FROM:<j\xc3\xb6rg@example.net> SMTPUTF8 "
        "RET=HDRS ENVID=QQ+2B1\r\nRCPT TO:<gr\xc3\xbc\xc3\x9fe@example.test> "
        "NOTIFY=SUCCESS,FAILURE ORCPT=utf-8;gr\xc3\xbc\xc3\x9fe@example.test"
        "\r\nRCPT TO:<b@example.test> NOTIFY=NEVER,DELAY\r\n"
        "MAIL FROM:<x@y.z> RET=FULL RET=HDRS\r\nRCPT TO:<\xff@example.test>"
        "\r\nDATA\r\n" + MSG + "QUIT\r\n"),
    "errors_and_limits": (
        header(ACCEPTED | SMALL, seed=21),
        "EHLO\r\nNOOP\nNO\rOP\r\n" + "A" * 100 + "\r\nXSTATUS now\r\n"
        "MAIL FROM:<a@example.net> SIZE=99999999\r\n"
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<1@example.test>\r\n"
        "RCPT TO:<2@example.test>\r\nRCPT TO:<3@example.test>\r\n"
        "RCPT TO:<4@example.test>\r\nDATA\r\n" + ("x" * 90 + "\r\n") * 30
        + "bare\nlf\r\n.\r\nQUIT\r\n"),
    "sinks_answer_everything": (
        header(ACCEPTED | STARTTLS | DRAIN | LOSE, bound=ALL_EVENTS | XSTATUS,
               replace=64, seed=99),
        "EHLO c.example\r\nXSTATUS\r\nMAIL FROM:<a@example.net>\r\n"
        "RCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
        + MSG + "STARTTLS\r\nEHLO again\r\nQUIT\r\n"),
    "data_line_limits": (
        # Small limits: 80 octets a line with CRLF, 2000 a message.
        header(ACCEPTED | SMALL, seed=41),
        "EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>"
        "\r\nDATA\r\n" + "y" * 78 + "\r\n." + "z" * 77 + "\r\n.\r\n"
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\nDATA"
        "\r\n" + "y" * 79 + "\r\n.\r\n"
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\nDATA"
        "\r\n" + ("w" * 76 + "\r\n") * 25 + ".\r\n"
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.test>\r\nDATA"
        "\r\n" + ("w" * 76 + "\r\n") * 26 + ".\r\nQUIT\r\n"),
    "early_talker": (header(EARLY, seed=2), "EHLO too.early\r\nQUIT\r\n"),
    "data_end_lookalikes": (
        header(TRUSTED, seed=31),
        "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n"
        "x\n.\ny\r.\rz\r\n.\nw\r\n.\r\n"
        "MAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n"
        ".\r\n"),
}


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def v2(command, family, payload):
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, family])
            + struct.pack(">H", len(payload)) + payload)


SMTP = b"EHLO client.example\r\n"
PROXY_SEEDS = {
    "v1_tcp4": b"\x00PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n" + SMTP,
    "v1_tcp6": b"\x02PROXY TCP6 2001:db8::1 2001:db8::2 4242 25\r\n" + SMTP,
    "v1_unknown": b"\x00PROXY UNKNOWN\r\n" + SMTP,
    "v1_partial": b"\x02PROXY TCP4 192.0.2.1 198.51",
    "v2_tcp4": b"\x01" + v2(1, 0x11, bytes([192, 0, 2, 1, 198, 51, 100, 2])
                          + struct.pack(">HH", 56324, 25)) + SMTP,
    "v2_tcp6_tlv": b"\x02" + v2(1, 0x21, bytes(range(16)) + bytes(range(16))
                              + struct.pack(">HH", 1, 2)
                              + b"\x04\x00\x03abc") + SMTP,
    "v2_local": b"\x01" + v2(0, 0x00, b"") + SMTP,
    "v2_unix": b"\x02" + v2(1, 0x31, b"/a" + bytes(214)) + SMTP,
}

CONFIG = """sinks:
  - name: stamp
    target: 127.0.0.1:7100
  - name: policy
    target: dns:///policy:7100
bindings:
  - name: b-late
    sink: stamp
    event: EOD
    priority: 30000
    content_access: read-write
    failure_policy: continue
    expiry_policy: hold
  - name: a-early
    sink: policy
    event: RCPT
    priority: 100
    rule: "mail from=*@example.com;rcpt to!=*@corp.example;client=192.0.2.0/24"
    deadline_ms: 2000
    failure_policy: reject
  - name: status
    sink: policy
    event: XSTATUS
    enabled: false
    session_affinity: true
  - name: drop
    sink: policy
    event: EOD
    priority: 100
    discard: true
    content_access: read
"""
CONFIG_SEEDS = {
    "bindings": b"\x00" + CONFIG.encode(),
    "flow_style": b"\x00sinks: [{name: m, target: \"127.0.0.1:1\"}]\n"
                  b"bindings: [{name: b, sink: m, event: MAIL, "
                  b"rule: \"helo=*.example.net\"}]\n",
    "empty": b"\x00sinks: []\nbindings: []\n",
    "rule_mail": b"\x80mail from=*@example.com,*@example.net;auth!=\n"
                 b"alice@Example.COM\nbob@corp.example\nmx.example.net\n"
                 b"192.0.2.7\n",
    "rule_client6": b"\x81client=2001:db8::/32;rcpt to=b*\na@b\nbob@x\nh\n"
                    b"2001:db8::5\nalice",
}


def pb(modules):
    sys.path.insert(0, modules)
    from sinkline.v1 import (content_pb2, session_pb2, sink_pb2,  # noqa
                             types_pb2)
    return content_pb2, session_pb2, sink_pb2, types_pb2


MESSAGE = (b"From: Alice <alice@example.net>\r\nTo: bob@example.test\r\n"
           b"Subject: seed\r\n\tfolded\r\nX-A: 1\r\n\r\nbody line\r\n"
           b"second line\r\n")


def with_length(b):
    return struct.pack(">H", len(b)) + b


def write_proto_seeds(modules):
    content_pb2, session_pb2, sink_pb2, t = pb(modules)
    V = sink_pb2.Verdict
    CE = t.ContentEdit
    EE = t.EnvelopeEdit
    cont = t.ACTION_CONTINUE
    verdicts = {
        "add_header": V(action=cont, content_edits=[CE(add_header=t.AddHeader(
            name="X-Stamp", value="yes\r\n folded"))]),
        "change_delete": V(action=cont, content_edits=[
            CE(change_header=t.ChangeHeader(name="subject", occurrence=1,
                                            value="new")),
            CE(delete_header=t.DeleteHeader(name="X-A", occurrence=1))]),
        "replace_body": V(action=cont, content_edits=[
            CE(replace_body=t.ReplaceBody(body=b"new body\r\n"))]),
        "write_range": V(action=cont, content_edits=[
            CE(write_range=t.WriteRange(offset=10, data=b"XYZ"))]),
        "write_range_truncate": V(action=cont, content_edits=[
            CE(write_range=t.WriteRange(offset=20, data=b"end\r\n",
                                        truncate=True))]),
        "mixed": V(action=cont, content_edits=[
            CE(add_header=t.AddHeader(name="X-1", value="a")),
            CE(write_range=t.WriteRange(offset=0, data=b"X")),
            CE(delete_header=t.DeleteHeader(name="To", occurrence=1))]),
        "envelope": V(action=cont, envelope_edits=[
            EE(set_sender="new@example.test"),
            EE(add_recipient=t.Recipient(address='"quoted local"@example.test')),
            EE(remove_recipient="b@example.test")]),
        "consume": V(action=t.ACTION_CONSUME, reply=t.Reply(
            code=550, enhanced_code="5.7.1", lines=["no"]),
            drop_session=False),
    }
    for i, (name, v) in enumerate(verdicts.items()):
        msg = MESSAGE if i % 2 == 0 else b"Subject: no separator"
        write("verdict", name, bytes([10, 3 if i % 3 else 2])
              + struct.pack(">H", len(msg)) + msg + v.SerializeToString())

    C = content_pb2
    ops = [
        (0, C.ReadRangeRequest(offset=0, length=0)),
        (0, C.ReadRangeRequest(offset=5, length=7)),
        (1, C.ReadHeadersRequest()),
        (2, C.WriteRangeRequest(offset=3, data=b"abc")),
        (3, C.AddHeaderRequest(header=t.AddHeader(name="X-C", value="1"))),
        (4, C.ChangeHeaderRequest(header=t.ChangeHeader(
            name="Subject", occurrence=1, value="changed"))),
        (5, C.DeleteHeaderRequest(header=t.DeleteHeader(name="X-A",
                                                        occurrence=1))),
        (6 | 0x30, C.ReplaceBodyRequest(data=b"a new body\r\n" * 10)),
        (7, C.SetSenderRequest(mail_from="s@example.test")),
        (8, C.AddRecipientRequest(recipient=t.Recipient(address="c@x.test"))),
        (9, C.RemoveRecipientRequest(address="b@example.test")),
        (10, C.RenewRequest(extend_ms=1000)),
        (11, C.ReleaseRequest()),
        (0, C.ReadRangeRequest(offset=0, length=0)),
    ]
    def content_seed(flags, chosen):
        out = bytes([flags]) + struct.pack(">H", len(MESSAGE)) + MESSAGE
        for op, req in chosen:
            out += bytes([op]) + with_length(req.SerializeToString())
        return out
    write("content", "writer_everything", content_seed(1, ops))
    write("content", "reader_everything", content_seed(0, ops))
    write("content", "two_leases_claims", content_seed(
        1 | 2 | 4, [(0x40, C.ReadRangeRequest()), (0x40 | 3, ops[4][1]),
                    (11 | 0x40, C.ReleaseRequest()), (3, ops[4][1])]))
    write("content", "bogus_tokens", content_seed(
        1 | 4 | 8, [(0x80, C.ReadRangeRequest(token="nope")),
                    (0x80 | 6, C.ReplaceBodyRequest(token="x", data=b"y" * 99)),
                    (0x80 | 11, C.ReleaseRequest(token=""))]))

    S = session_pb2
    info = t.SessionInfo(session_id="0123abcdef", server_hostname="mx.test",
                         helo_name="c.example",
                         client=t.Address(ip="192.0.2.1", port=4000))
    def ev(seq, type_, tx="", notify=False, **kw):
        return S.SessionRequest(notify_only=notify, event=t.Event(
            type=type_, sequence=seq, session=info, transaction_id=tx,
            native_reply=t.Reply(code=250, enhanced_code="2.0.0",
                                 lines=["Ok"]), **kw))
    env = t.Envelope(mail_from="a@example.net",
                     recipients=[t.Recipient(address="b@example.test")])
    session = [
        S.SessionRequest(start=S.SessionStart(session=info)),
        ev(1, t.EVENT_TYPE_EHLO, argument="c.example"),
        ev(2, t.EVENT_TYPE_MAIL, tx="T1", envelope=t.Envelope(
            mail_from="a@example.net")),
        ev(3, t.EVENT_TYPE_RCPT, tx="T1", envelope=t.Envelope(
            mail_from="a@example.net"),
            recipient=t.Recipient(address="b@example.test")),
        ev(4, t.EVENT_TYPE_DATA, tx="T1", envelope=env),
        S.SessionRequest(data=S.DataChunk(transaction_id="T1",
                                          data=MESSAGE[:40])),
        S.SessionRequest(data=S.DataChunk(transaction_id="T1",
                                          data=MESSAGE[40:])),
        ev(5, t.EVENT_TYPE_EOD, tx="T1", envelope=env),
        ev(6, t.EVENT_TYPE_QUIT),
        ev(7, t.EVENT_TYPE_DISCONNECT, notify=True),
    ]
    def stream_seed(reqs):
        return b"".join(with_length(r.SerializeToString()) for r in reqs)
    write("session_stream", "one_message", stream_seed(session))
    write("session_stream", "two_messages", stream_seed(
        session[:8] + [ev(8, t.EVENT_TYPE_MAIL, tx="T2", envelope=t.Envelope(
            mail_from="")), ev(9, t.EVENT_TYPE_RCPT, tx="T2",
                              recipient=t.Recipient(address="c@x.test")),
            ev(10, t.EVENT_TYPE_BDAT, tx="T2", envelope=env),
            S.SessionRequest(data=S.DataChunk(transaction_id="T2",
                                              data=b"Subject: b\r\n\r\nx")),
            ev(11, t.EVENT_TYPE_EOD, tx="T2", envelope=env)]))
    write("session_stream", "traversal", stream_seed([
        S.SessionRequest(start=S.SessionStart(session=t.SessionInfo(
            session_id="../../victim"))),
        S.SessionRequest(data=S.DataChunk(transaction_id="../x", data=b"x"))]))
    write("session_stream", "no_start", stream_seed(session[1:6]))
    write("session_stream", "repeated_sequence", stream_seed(
        session[:3] + [ev(2, t.EVENT_TYPE_RCPT, tx="T1")] + session[4:]))
    write("session_stream", "eod_without_data", stream_seed(
        session[:4] + [ev(5, t.EVENT_TYPE_EOD, tx="T9", envelope=env)]))


def main():
    os.makedirs(HERE, exist_ok=True)
    for name, (head, text) in SEEDS.items():
        data = head + text.encode("latin-1")
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    for name, data in PROXY_SEEDS.items():
        write("proxy", name, data)
    for name, data in CONFIG_SEEDS.items():
        write("config", name, data)
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    write_proto_seeds(sys.argv[1] if len(sys.argv) > 1
                      else os.path.join(root, "build", "dev", "python"))


if __name__ == "__main__":
    main()
