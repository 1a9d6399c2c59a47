#!/usr/bin/python3
"""A sink for the content service tests: bound to EOD after COMMIT, it
holds its lease and writes what it got (binding, queue id, token, content
endpoint, access) as one JSON line to --out, so that the test itself can
make content calls with real tokens and watch what the broker answers."""

import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "sinks", "python"))
import sinkline_sink  # noqa: E402

args = None
lock = threading.Lock()


def on_event(ctx):
    if ctx.event.type != sinkline_sink.EOD or not ctx.request.lease.token:
        return
    lease = ctx.request.lease
    ctx.hold_lease()
    with lock, open(args.out, "a") as f:
        f.write(json.dumps({"binding": ctx.request.binding,
                            "queue_id": ctx.event.queue_id,
                            "token": lease.token,
                            "endpoint": lease.content_endpoint,
                            "access": lease.access}) + "\n")


def add_flags(parser):
    parser.add_argument("--out", required=True)


if __name__ == "__main__":
    args = sinkline_sink.parse_args("token-keeper", add_flags)
    sys.exit(sinkline_sink.serve(on_event, "token-keeper", args))
