"""A small SDK for Sinkline sinks written in Python, on Debian's
python3-grpcio and python3-protobuf: any language that speaks gRPC can be a
sink.

    import sinkline_sink

    def on_event(ctx):
        if ctx.event.type == sinkline_sink.EOD:
            ctx.add_header("X-Hello", "world")

    sinkline_sink.serve(on_event, name="hello")

A sink that keeps its lease past the verdict talks to the broker's Content
service through `ContentClient` (`ctx.content_client()`): every call sends
the lease token and names the invocation's message and binding in its
metadata (sinkline-queue-id, sinkline-binding), so the broker refuses a
token of another message or binding with PERMISSION_DENIED.

The message classes come from `protoc --python_out` of proto/sinkline/v1
(the build writes them to build/<preset>/python; put that on PYTHONPATH).
"""

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

import health_pb2
from sinkline.v1 import content_pb2, sink_pb2, types_pb2

EOD = types_pb2.EVENT_TYPE_EOD
RCPT = types_pb2.EVENT_TYPE_RCPT
MAIL = types_pb2.EVENT_TYPE_MAIL
CONNECT = types_pb2.EVENT_TYPE_CONNECT


class Context:
    """One invocation: the request, and helpers that build the verdict."""

    def __init__(self, request, args=None):
        self.request = request
        self.event = request.event
        self.verdict = sink_pb2.Verdict(action=types_pb2.ACTION_CONTINUE)
        self._args = args

    def content_client(self):
        """A ContentClient for this invocation's lease, on a channel to its
        content endpoint with the sink's TLS (close() it when done)."""
        lease = self.request.lease
        channel = content_channel(self._args, lease.content_endpoint)
        return ContentClient(channel, self.request, own_channel=True)

    @property
    def content(self):
        """The whole message if the broker sent it inline, else None."""
        return self.request.inline_content if self.request.content_inline else None

    def headers(self):
        """(name, value) pairs of the inline message's header block."""
        content = self.content
        if content is None:
            return []
        block = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields = []
        for line in block.split("\r\n"):
            if line[:1] in (" ", "\t") and fields:
                fields[-1][1] += "\r\n" + line
            elif ":" in line:
                name, value = line.split(":", 1)
                fields.append([name, value.lstrip(" ")])
        return [tuple(f) for f in fields]

    def _reply(self, code, enhanced, text):
        self.verdict.reply.code = code
        self.verdict.reply.enhanced_code = enhanced
        del self.verdict.reply.lines[:]
        self.verdict.reply.lines.append(text)

    def consume(self, code, enhanced, text):
        self.verdict.action = types_pb2.ACTION_CONSUME
        self._reply(code, enhanced, text)

    reject = consume

    def continue_with_reply(self, code, enhanced, text):
        self.verdict.action = types_pb2.ACTION_CONTINUE
        self._reply(code, enhanced, text)

    def add_header(self, name, value, index=0):
        edit = self.verdict.content_edits.add().add_header
        edit.name, edit.value = name, value
        edit.position.index = index

    def hold_lease(self):
        self.verdict.hold_lease = True


def claim_metadata(request):
    """The metadata that names `request`'s message and binding on Content
    calls (for callers that make their own)."""
    md = []
    if request.event.queue_id:
        md.append(("sinkline-queue-id", request.event.queue_id))
    if request.binding:
        md.append(("sinkline-binding", request.binding))
    return md


class ContentClient:
    """The broker's Content service for one invocation's lease (a
    sink_pb2.SinkRequest): reads, writes and ends the lease, each call with
    the lease token and the invocation's claim in its metadata."""

    def __init__(self, channel, request, own_channel=False, timeout=60):
        self.channel = channel
        self.token = request.lease.token
        self.metadata = claim_metadata(request)
        self.timeout = timeout
        self._own = own_channel

    def close(self):
        if self._own:
            self.channel.close()

    def _unary(self, method, request, response_type):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.Content/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=self.timeout, metadata=self.metadata)

    def read(self, offset=0, length=0):
        """The message bytes in the lease's version ([offset, +length); 0:
        to the end)."""
        fn = self.channel.unary_stream(
            "/sinkline.v1.Content/ReadRange",
            request_serializer=content_pb2.ReadRangeRequest.SerializeToString,
            response_deserializer=content_pb2.ReadRangeResponse.FromString)
        return b"".join(p.data for p in fn(
            content_pb2.ReadRangeRequest(token=self.token, offset=offset,
                                         length=length),
            timeout=self.timeout, metadata=self.metadata))

    def write_range(self, offset, data, truncate=False):
        return self._unary("WriteRange", content_pb2.WriteRangeRequest(
            token=self.token, offset=offset, data=data, truncate=truncate),
            content_pb2.EditResponse)

    def replace_body(self, body, chunk=1 << 20):
        fn = self.channel.stream_unary(
            "/sinkline.v1.Content/ReplaceBody",
            request_serializer=content_pb2.ReplaceBodyRequest.SerializeToString,
            response_deserializer=content_pb2.EditResponse.FromString)

        def requests():
            yield content_pb2.ReplaceBodyRequest(token=self.token,
                                                 data=body[:chunk])
            for i in range(chunk, len(body), chunk):
                yield content_pb2.ReplaceBodyRequest(data=body[i:i + chunk])
        return fn(requests(), timeout=self.timeout, metadata=self.metadata)

    def renew(self, extend_ms):
        return self._unary("Renew", content_pb2.RenewRequest(
            token=self.token, extend_ms=extend_ms), content_pb2.RenewResponse)

    def release(self, discard=False):
        return self._unary("Release", content_pb2.ReleaseRequest(
            token=self.token, discard=discard), content_pb2.ReleaseResponse)


def parse_args(name, extra_args=None, argv=None):
    """The common flags (--listen, --port-file, --workers, --log-level) plus
    those `extra_args(parser)` adds."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--listen", default="127.0.0.1:7200")
    parser.add_argument("--port-file", default="")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--log-level", default="info")
    # The control plane's TLS, as in every Sinkline binary.
    parser.add_argument("--grpc-tls-cert", default="")
    parser.add_argument("--grpc-tls-key", default="")
    parser.add_argument("--grpc-tls-ca", default="")
    parser.add_argument("--grpc-tls-server-name", default="")
    if extra_args:
        extra_args(parser)
    return parser.parse_args(argv)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def server_credentials(args):
    """TLS for the sink's server (client certificates required when a CA
    is given), or None for plaintext."""
    if not args.grpc_tls_cert:
        return None
    ca = _read(args.grpc_tls_ca) if args.grpc_tls_ca else None
    return grpc.ssl_server_credentials(
        [(_read(args.grpc_tls_key), _read(args.grpc_tls_cert))],
        root_certificates=ca, require_client_auth=ca is not None)


def content_channel(args, address):
    """A channel to the broker's Content service at `address` (the event's
    content endpoint), with the same TLS as the sink's server."""
    if not args.grpc_tls_cert:
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(_read(args.grpc_tls_ca)
                           if args.grpc_tls_ca else None),
        private_key=_read(args.grpc_tls_key),
        certificate_chain=_read(args.grpc_tls_cert))
    options = []
    if args.grpc_tls_server_name:
        options.append(("grpc.ssl_target_name_override",
                        args.grpc_tls_server_name))
    return grpc.secure_channel(address, creds, options=options)


def serve(handler, name, args=None):
    """Serves `handler(ctx)` as sinkline.v1.Sink/OnEvent, with
    grpc.health.v1.Health/Check, until SIGTERM or SIGINT."""
    if args is None:
        args = parse_args(name)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {name} %(levelname)s: %(message)s")
    log = logging.getLogger(name)

    def on_event(request, context):
        ctx = Context(request, args)
        try:
            handler(ctx)
        except Exception as e:  # a bug in the sink is a failed call
            log.exception("handler failed")
            context.abort(grpc.StatusCode.INTERNAL, f"sink handler failed: {e}")
        return ctx.verdict

    def check(request, context):
        if request.service not in ("", "sinkline.v1.Sink"):
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"unknown service {request.service}")
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("sinkline.v1.Sink", {
            "OnEvent": grpc.unary_unary_rpc_method_handler(
                on_event,
                request_deserializer=sink_pb2.SinkRequest.FromString,
                response_serializer=sink_pb2.Verdict.SerializeToString),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        }),
    ))
    creds = server_credentials(args)
    port = (server.add_secure_port(args.listen, creds) if creds
            else server.add_insecure_port(args.listen))
    if port == 0:
        log.critical("cannot listen on %s", args.listen)
        return 1
    server.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.rename(tmp, args.port_file)
    log.info("%s sink serving on port %d", name, port)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    server.stop(grace=5).wait()
    return 0
