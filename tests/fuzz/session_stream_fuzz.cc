// Fuzz target for the SessionService stream as a hostile (or broken) edge
// sends it: an in-process broker (sink_broker/broker.h) with bindings on
// MAIL, RCPT and EOD (before and after COMMIT, with read-write leases) to a
// fake sink, a fake queue, and a spool in a scratch directory, driven over
// an in-process gRPC channel (no network).
//
// Input: SessionRequests, each as [n (2 octets, big-endian)] and n octets
// of serialized sinkline.v1.SessionRequest. They are written in order on one
// stream, then the stream is half-closed; the broker's responses are read
// meanwhile.
//
// Invariants checked (a violation aborts): the stream ends (deadline 10 s,
// never DEADLINE_EXCEEDED); it ends OK or with a canonical refusal
// (INVALID_ARGUMENT, FAILED_PRECONDITION, RESOURCE_EXHAUSTED,
// UNAUTHENTICATED, PERMISSION_DENIED, OUT_OF_RANGE, UNAVAILABLE,
// CANCELLED) with a message; every result answers an event that waited for
// one (its sequence), once, with a reply of class 2, 4 or 5 (or none, or
// the edge's own native reply);
// a result with a queue id answers an EOD; every committed message is
// submitted (within 10 s); nothing is created outside the spool.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sink_broker/broker.h"
#include "sink_broker/config.h"
#include "sink_broker/spool.h"
#include "sinkline/v1/session.grpc.pb.h"

namespace sinkline::broker {
namespace {

constexpr char kEdgeToken[] = "fuzz-edge-token-0123456789";

namespace fs = std::filesystem;

[[noreturn]] void Violation(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "session_stream_fuzz: invariant violated: %s: %.600s\n",
               what, detail.c_str());
  std::abort();
}

// Continues at once; at RCPT it sometimes adds a recipient, at EOD (with
// the content inline) it sometimes adds a header, as real sinks do.
class FakeSink : public SinkInvoker {
 public:
  void Invoke(const SinkConfig&, std::shared_ptr<const v1::SinkRequest> req,
              std::chrono::system_clock::time_point, Done done) override {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    const auto& e = req->event();
    const uint64_t n = e.sequence();
    if (e.type() == v1::EVENT_TYPE_RCPT && n % 3 == 0) {
      v.add_envelope_edits()->mutable_add_recipient()->set_address(
          "added@example.test");
    }
    if (e.type() == v1::EVENT_TYPE_EOD && n % 2 == 0) {
      auto* h = v.add_content_edits()->mutable_add_header();
      h->set_name("X-Fuzz");
      h->set_value("seen");
    }
    if (e.type() == v1::EVENT_TYPE_MAIL && n % 5 == 0) {
      v.set_action(v1::ACTION_CONSUME);
      auto* r = v.mutable_reply();
      r->set_code(450);
      r->set_enhanced_code("4.7.1");
      r->add_lines("try later");
    }
    done(v);
  }
};

class FakeQueue : public QueueBackend {
 public:
  absl::StatusOr<SubmitOutcome> Submit(const v1::QueueEntry&,
                                       const std::string&) override {
    return SubmitOutcome{};
  }
  std::string Describe() const override { return "fuzz queue"; }
};

constexpr char kBindings[] = R"(
sinks:
  - name: fake
    target: 127.0.0.1:1
bindings:
  - name: mail
    sink: fake
    event: MAIL
    priority: 100
    failure_policy: continue
  - name: rcpt
    sink: fake
    event: RCPT
    priority: 100
    content_access: read-write
  - name: eod-before
    sink: fake
    event: EOD
    priority: 1000
    content_access: read-write
  - name: eod-after
    sink: fake
    event: EOD
    priority: 30000
    content_access: read-write
)";

struct World {
  World() {
    // The broker's log is for people; SINKLINE_FUZZ_TRACE=1 keeps it. The
    // logger exists before the world, so that it outlives the world's
    // threads at exit (see Stop).
    spdlog::default_logger();
    // Likewise OpenSSL (lease tokens), whose clean-up at exit is registered
    // when it is first used.
    OPENSSL_init_crypto(0, nullptr);
    if (std::getenv("SINKLINE_FUZZ_TRACE") == nullptr) {
      spdlog::set_level(spdlog::level::off);
    }
    std::string d =
        (fs::temp_directory_path() / "sinkline-stream-fuzz-XXXXXX").string();
    if (::mkdtemp(d.data()) == nullptr) Violation("mkdtemp");
    root = d;
    spool = root + "/spool";
    fs::create_directories(spool);
    if (auto st = Spool(spool).Prepare(); !st.ok()) {
      Violation("spool", st.ToString());
    }
    auto config = ParseConfig(kBindings, "fuzz.yaml");
    if (!config.ok()) Violation("config", config.status().ToString());
    BrokerOptions opts;
    opts.spool_dir = spool;
    opts.admin_state_path = spool + "/admin-bindings.yaml";
    opts.advertise = "127.0.0.1:1";
    opts.workers = 2;
    opts.submit_workers = 1;
    opts.chain_deadline = std::chrono::milliseconds(5000);
    // The fuzzer plays an edge that holds the edges' token; what an
    // unauthenticated caller gets is security_session's business.
    opts.edge_guard = EdgeGuard(kEdgeToken, {}, /*allow_loopback=*/false);
    broker = std::make_unique<Broker>(opts, std::move(*config),
                                      std::make_unique<FakeQueue>(),
                                      std::make_unique<FakeSink>());
    broker->RecoverSpool();
    grpc::ServerBuilder b;
    b.RegisterService(broker->session_service());
    b.RegisterService(broker->content_service());
    server = b.BuildAndStart();
    if (!server) Violation("in-process server");
    stub = v1::SessionService::NewStub(server->InProcessChannel({}));
    std::atexit(Stop);
  }
  // At exit, before the logger goes: no call in flight and the broker's
  // threads joined (it would log from them otherwise).
  static void Stop();
  std::string root, spool;
  std::unique_ptr<Broker> broker;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::SessionService::Stub> stub;
};

World& TheWorld() {
  static World* w = new World();  // lives for the process
  return *w;
}

void World::Stop() {
  World& w = TheWorld();
  w.server->Shutdown();
  w.broker->Drain();
  // gRPC's and OpenSSL's own threads and per-thread state would race with
  // their libraries' clean-up at exit: the process ends here, its work done.
  std::fflush(nullptr);
  std::_Exit(0);
}

bool Refusal(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
      return true;
    default:
      return false;
  }
}

void Run(const uint8_t* data, size_t size) {
  std::vector<v1::SessionRequest> requests;
  for (size_t pos = 0; pos + 2 <= size && requests.size() < 256;) {
    const size_t n =
        std::min<size_t>((data[pos] << 8) | data[pos + 1], size - pos - 2);
    v1::SessionRequest r;
    if (r.ParseFromArray(data + pos + 2, static_cast<int>(n))) {
      requests.push_back(std::move(r));
    }
    pos += 2 + n;
  }
  if (requests.empty()) return;
  World& w = TheWorld();
  // The events that wait for a result, by sequence.
  std::multiset<uint64_t> waiting;
  std::set<uint64_t> eods;
  // The edge's own native replies, which the broker may hand back as they
  // came (a hostile edge only misleads itself with them).
  std::map<uint64_t, std::set<uint32_t>> native;
  for (const auto& r : requests) {
    if (r.has_event() && !r.notify_only()) {
      waiting.insert(r.event().sequence());
      native[r.event().sequence()].insert(r.event().native_reply().code());
      if (r.event().type() == v1::EVENT_TYPE_EOD) {
        eods.insert(r.event().sequence());
      }
    }
  }

  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kEdgeToken);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = w.stub->Stream(&ctx);
  std::vector<v1::SessionResponse> responses;
  std::thread reader([&] {
    v1::SessionResponse resp;
    while (stream->Read(&resp)) responses.push_back(resp);
  });
  for (const auto& r : requests) {
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  reader.join();
  const grpc::Status st = stream->Finish();
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    Violation("the stream did not end in time");
  }
  if (!st.ok() && (!Refusal(st.error_code()) || st.error_message().empty())) {
    Violation("unexpected status",
              std::to_string(st.error_code()) + " " + st.error_message());
  }
  for (const auto& resp : responses) {
    if (!resp.has_result()) continue;
    const auto& res = resp.result();
    auto it = waiting.find(res.sequence());
    if (it == waiting.end()) {
      Violation("a result for no waiting event", res.ShortDebugString());
    }
    waiting.erase(it);
    const uint32_t cls = res.reply().code() / 100;
    if (res.reply().code() != 0 && (cls < 2 || cls > 5) &&
        !native[res.sequence()].count(res.reply().code())) {
      Violation("reply class", res.ShortDebugString());
    }
    if (!res.queue_id().empty() && !eods.count(res.sequence())) {
      Violation("a queue id for an event that is no EOD",
                res.ShortDebugString());
    }
  }
  // The broker finishes what the session left (chains after COMMIT, the
  // submission to the fake queue) before the next input: each input runs
  // alone, and nothing runs at exit.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!fs::is_empty(w.spool + "/committed")) {
    if (std::chrono::steady_clock::now() > deadline) {
      Violation("a committed message was never submitted");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Nothing outside the spool.
  for (const auto& e : fs::directory_iterator(w.root)) {
    if (e.path() != w.spool) Violation("a file outside the spool", e.path());
  }
}

}  // namespace
}  // namespace sinkline::broker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Strings that are not UTF-8 are what fuzzing makes; protobuf's log of
  // each would drown the output.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  sinkline::broker::Run(data, size);
  return 0;
}
