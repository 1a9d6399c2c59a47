#!/usr/bin/python3
"""A sink for the lease tests (the KB836549 scenario): bound to EOD after
COMMIT, it answers at once but holds its lease, waits, reads the whole
message through the broker's Content service, adds a header, releases the
lease, and then checks that a content call after the release is refused with
FAILED_PRECONDITION. It keeps its counts in --stats (JSON)."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "sinks", "python"))
import grpc  # noqa: E402

import sinkline_sink  # noqa: E402
from sinkline.v1 import content_pb2, types_pb2  # noqa: E402

args = None
lock = threading.Lock()
stats = {"held": 0, "redelivered": 0, "released": 0, "content_failures": 0,
         "refused_after_release": 0, "other_after_release": 0, "errors": []}
channels = {}


def save():
    tmp = args.stats + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.rename(tmp, args.stats)


def channel(endpoint):
    with lock:
        if endpoint not in channels:
            channels[endpoint] = grpc.insecure_channel(endpoint)
        return channels[endpoint]


def unary(ch, method, req, resp_type):
    return ch.unary_unary(f"/sinkline.v1.Content/{method}",
                          request_serializer=type(req).SerializeToString,
                          response_deserializer=resp_type.FromString)(
                              req, timeout=10)


def read_all(ch, token):
    stream = ch.unary_stream(
        "/sinkline.v1.Content/ReadRange",
        request_serializer=content_pb2.ReadRangeRequest.SerializeToString,
        response_deserializer=content_pb2.ReadRangeResponse.FromString)
    data = b""
    for part in stream(content_pb2.ReadRangeRequest(token=token), timeout=10):
        data += part.data
    return data


def work(token, endpoint, queue_id):
    ch = channel(endpoint)
    try:
        time.sleep(args.delay_ms / 1000.0)
        data = read_all(ch, token)
        header = types_pb2.AddHeader(
            name="X-Sinkline-Read", value=f"{len(data)}; {queue_id}")
        unary(ch, "AddHeader",
              content_pb2.AddHeaderRequest(token=token, header=header),
              content_pb2.EditResponse)
        unary(ch, "Release", content_pb2.ReleaseRequest(token=token),
              content_pb2.ReleaseResponse)
        with lock:
            stats["released"] += 1
    except grpc.RpcError as e:
        with lock:
            stats["content_failures"] += 1
            stats["errors"].append(f"{e.code()}: {e.details()}")
            save()
        return
    try:
        read_all(ch, token)
        outcome = "other_after_release"
    except grpc.RpcError as e:
        outcome = ("refused_after_release"
                   if e.code() == grpc.StatusCode.FAILED_PRECONDITION
                   else "other_after_release")
    with lock:
        stats[outcome] += 1
        save()


def on_event(ctx):
    if ctx.event.type != sinkline_sink.EOD or not ctx.request.after_commit:
        return
    lease = ctx.request.lease
    ctx.hold_lease()
    with lock:
        stats["held"] += 1
        stats["redelivered"] += 1 if ctx.request.redelivery else 0
        save()
    threading.Thread(target=work, args=(lease.token, lease.content_endpoint,
                                        ctx.event.queue_id),
                     daemon=True).start()


def add_flags(parser):
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--stats", required=True)


if __name__ == "__main__":
    args = sinkline_sink.parse_args("slow-reader", add_flags)
    save()
    sys.exit(sinkline_sink.serve(on_event, "slow-reader", args))
