// The broker's own cost per event: an in-process broker with no sink, one
// sink and five sinks bound to MAIL, driven over its real session stream on
// loopback; and, as a baseline, one direct call to a sink. The sinks answer
// CONTINUE at once, so what remains is the broker's work and the gRPC hops.
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>

#include "sink_broker/broker.h"
#include "sink_broker/queue_dir.h"
#include "sinkline/common/grpc_server.h"

namespace sb = sinkline::broker;
namespace v1 = sinkline::v1;
namespace fs = std::filesystem;

namespace {

class NoopSink final : public v1::Sink::CallbackService {
  grpc::ServerUnaryReactor* OnEvent(grpc::CallbackServerContext* ctx,
                                    const v1::SinkRequest*,
                                    v1::Verdict* verdict) override {
    verdict->set_action(v1::ACTION_CONTINUE);
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

struct Rig {
  explicit Rig(int sinks) {
    dir = fs::temp_directory_path() /
          ("sinkline-bench-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    (void)sb::Spool((dir / "spool").string()).Prepare();
    sink_server = std::move(*sinkline::StartGrpcServer("127.0.0.1:0", {&sink}));
    std::string yaml = "sinks:\n  - name: noop\n    target: 127.0.0.1:" +
                       std::to_string(sink_server.port) + "\nbindings:\n";
    if (sinks == 0) yaml += "  []\n";
    for (int i = 0; i < sinks; ++i) {
      yaml += "  - name: b" + std::to_string(i) +
              "\n    sink: noop\n    event: MAIL\n    priority: " +
              std::to_string(100 + i) + "\n";
    }
    auto config = sb::ParseConfig(yaml, "bench.yaml");
    if (!config.ok()) std::abort();
    sb::BrokerOptions opts;
    opts.spool_dir = (dir / "spool").string();
    opts.edge_guard = sb::EdgeGuard("", {}, /*allow_loopback=*/true);
    broker = std::make_unique<sb::Broker>(
        opts, std::move(*config),
        std::move(*sb::QueueDirBackend::Create((dir / "queue").string())));
    broker_server = std::move(
        *sinkline::StartGrpcServer("127.0.0.1:0", {broker->session_service()}));
    stub = v1::SessionService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(broker_server.port),
                            grpc::InsecureChannelCredentials()));
    stream = stub->Stream(&ctx);
    v1::SessionRequest start;
    start.mutable_start()->mutable_session()->set_session_id("bench");
    stream->Write(start);
    v1::SessionResponse map;
    stream->Read(&map);
    event.set_type(v1::EVENT_TYPE_MAIL);
    event.mutable_envelope()->set_mail_from("a@example.net");
    auto* native = event.mutable_native_reply();
    native->set_code(250);
    native->set_enhanced_code("2.1.0");
    native->add_lines("Ok");
  }
  ~Rig() {
    stream->WritesDone();
    v1::SessionResponse r;
    while (stream->Read(&r)) {
    }
    (void)stream->Finish();
    broker_server.Stop();
    broker.reset();
    sink_server.Stop();
    fs::remove_all(dir);
  }

  fs::path dir;
  NoopSink sink;
  sinkline::GrpcServer sink_server;
  std::unique_ptr<sb::Broker> broker;
  sinkline::GrpcServer broker_server;
  std::unique_ptr<v1::SessionService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>>
      stream;
  v1::Event event;
  uint64_t seq = 0;
};

// One MAIL event through the broker's chain, answered.
void BM_EventThroughBroker(benchmark::State& state) {
  Rig rig(static_cast<int>(state.range(0)));
  v1::SessionRequest req;
  v1::SessionResponse resp;
  for (auto _ : state) {
    rig.event.set_sequence(++rig.seq);
    *req.mutable_event() = rig.event;
    rig.stream->Write(req);
    if (!rig.stream->Read(&resp) || resp.result().reply().code() != 250) {
      state.SkipWithError("no reply");
      break;
    }
  }
  state.counters["events/s"] =
      benchmark::Counter(state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EventThroughBroker)
    ->ArgName("sinks")
    ->Arg(0)
    ->Arg(1)
    ->Arg(5)
    ->UseRealTime()
    ->MinTime(2.0);

// Baseline: one call straight to a sink, without the broker.
void BM_DirectSinkCall(benchmark::State& state) {
  NoopSink sink;
  auto server = std::move(*sinkline::StartGrpcServer("127.0.0.1:0", {&sink}));
  auto stub = v1::Sink::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port),
                          grpc::InsecureChannelCredentials()));
  v1::SinkRequest req;
  req.mutable_event()->set_type(v1::EVENT_TYPE_MAIL);
  v1::Verdict verdict;
  for (auto _ : state) {
    grpc::ClientContext ctx;
    if (!stub->OnEvent(&ctx, req, &verdict).ok()) {
      state.SkipWithError("sink call failed");
      break;
    }
  }
  state.counters["events/s"] =
      benchmark::Counter(state.iterations(), benchmark::Counter::kIsRate);
  server.Stop();
}
BENCHMARK(BM_DirectSinkCall)->UseRealTime()->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
