#!/usr/bin/python3
"""A sink for the crash tests, bound twice to EOD with inline content:
  --phase=pre   before COMMIT: a message whose body says REJECT-ME is
                refused (550), so it must never be submitted;
  --phase=post  after COMMIT, through its read-write lease: a message whose
                body says VIRUS is refused (550: the broker quarantines
                it); every other one gets a header "X-Policy: <queue id>"
                and a recipient audit@example.test, one lease's two writes.
Every call after COMMIT is written to --out as one JSON line (queue id,
redelivery flag), so that a test sees which sinks ran twice. With --gate,
a call after COMMIT answers only once that file exists (a slow sink)."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "sinks", "python"))
import sinkline_sink  # noqa: E402

args = None
lock = threading.Lock()


def on_event(ctx):
    if ctx.event.type != sinkline_sink.EOD:
        return
    body = ctx.content or b""
    if args.phase == "pre":
        if b"REJECT-ME" in body:
            ctx.reject(550, "5.7.1", "refused by policy")
        return
    qid = ctx.event.queue_id
    with lock, open(args.out, "a") as f:
        f.write(json.dumps({"queue_id": qid,
                            "redelivery": ctx.request.redelivery}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    # A slow sink: waits (at most a minute) until the --gate file exists.
    for _ in range(1200):
        if not args.gate or os.path.exists(args.gate):
            break
        time.sleep(0.05)
    if b"VIRUS" in body:
        ctx.reject(550, "5.7.1", "virus found")
        return
    ctx.add_header("X-Policy", qid)
    ctx.verdict.envelope_edits.add().add_recipient.address = \
        "audit@example.test"


def add_flags(parser):
    parser.add_argument("--phase", choices=("pre", "post"), required=True)
    parser.add_argument("--out", default="")
    parser.add_argument("--gate", default="")


if __name__ == "__main__":
    args = sinkline_sink.parse_args("policy", add_flags)
    sys.exit(sinkline_sink.serve(on_event, "policy-" + args.phase, args))
