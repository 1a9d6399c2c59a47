#!/usr/bin/python3
"""Writes the seed corpus of tests/fuzz/session_fuzz.cc: realistic client
transcripts, each behind the target's 8-octet header (flags, bound events,
how often sinks replace replies, seed). Run it again after changing it; the
files are committed."""

import base64
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

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


def main():
    os.makedirs(HERE, exist_ok=True)
    for name, (head, text) in SEEDS.items():
        data = head + text.encode("latin-1")
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
