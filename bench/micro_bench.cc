// Micro-benchmarks of the pieces one message goes through, each alone and
// in-process: the SMTP parser and session (a whole transaction fed to the
// state machine), binding rules, the chain engine with an in-process
// SinkInvoker, the spool's commit on a temporary directory, and header
// edits. Run with bench/run.sh micro.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <filesystem>
#include <future>

#include "sink_broker/chain.h"
#include "sink_broker/config.h"
#include "sink_broker/incoming.h"
#include "sink_broker/lease.h"
#include "sink_broker/message_edit.h"
#include "sink_broker/messages.h"
#include "sink_broker/rule.h"
#include "sink_broker/spool.h"
#include "sink_broker/verdict.h"
#include "smtp_edge/parser.h"
#include "smtp_edge/session.h"

namespace sb = sinkline::broker;
namespace se = sinkline::edge;
namespace v1 = sinkline::v1;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

std::string Body(size_t size) {
  std::string m =
      "From: <bench@example.test>\r\nTo: <rcpt@example.test>\r\n"
      "Subject: micro\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\n"
      "Message-ID: <1@bench.example.test>\r\n\r\n";
  const std::string line = std::string(76, 'x') + "\r\n";
  while (m.size() + line.size() <= size) m += line;
  return m;
}

// ---- SMTP parser -----------------------------------------------------------

void BM_ParseMailCommand(benchmark::State& state) {
  const std::string line =
      "MAIL FROM:<bench@example.test> SIZE=5000 BODY=8BITMIME";
  for (auto _ : state) {
    se::Command c = se::ParseCommand(line);
    auto path = se::ParsePathArgument(c.argument, "FROM:", true);
    benchmark::DoNotOptimize(path);
  }
}
BENCHMARK(BM_ParseMailCommand);

// ---- SMTP session ----------------------------------------------------------

// Answers bound events with their native reply at once; counts the bytes.
class Output : public se::SessionOutput {
 public:
  void Write(std::string bytes) override { written += bytes.size(); }
  void SendEvent(const v1::Event& event, bool notify_only) override {
    if (!notify_only) pending.push_back(event);
  }
  void SendData(const std::string&, std::string chunk) override {
    data += chunk.size();
  }
  void Close() override {}
  void Answer(se::Session& s) {
    while (!pending.empty()) {
      v1::EventResult r;
      r.set_sequence(pending.front().sequence());
      *r.mutable_reply() = pending.front().native_reply();
      pending.erase(pending.begin());
      s.OnResult(r);
    }
  }
  std::vector<v1::Event> pending;
  size_t written = 0;
  size_t data = 0;
};

// One whole connection (greeting, EHLO, MAIL, RCPT, DATA with a 5,000-octet
// message, QUIT) through the session state machine; range(0) is 1 when
// every event is bound (the broker answers each), 0 when none is.
void BM_SessionTransaction(benchmark::State& state) {
  const std::string input =
      "EHLO client.example.net\r\nMAIL FROM:<bench@example.test>\r\n"
      "RCPT TO:<rcpt@example.test>\r\nDATA\r\n" +
      Body(5000) + ".\r\nQUIT\r\n";
  v1::BindingMap map;
  if (state.range(0) != 0) {
    for (auto e :
         {v1::EVENT_TYPE_CONNECT, v1::EVENT_TYPE_HELO, v1::EVENT_TYPE_MAIL,
          v1::EVENT_TYPE_RCPT, v1::EVENT_TYPE_DATA}) {
      map.add_events(e);
    }
  }
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  se::SessionPolicy policy;
  policy.trusted_client = true;
  for (auto _ : state) {
    Output out;
    se::Session s(se::SessionLimits{}, policy, info, &out);
    s.SetBindingMap(map);
    s.Start();
    out.Answer(s);
    s.Feed(input);
    out.Answer(s);
    benchmark::DoNotOptimize(out.written);
  }
  state.SetBytesProcessed(state.iterations() * input.size());
}
BENCHMARK(BM_SessionTransaction)->ArgName("bound")->Arg(0)->Arg(1);

// ---- Rules -----------------------------------------------------------------

void BM_RuleMatch(benchmark::State& state) {
  auto rule = sb::Rule::Parse(
      "mail from=*@corp.example,*@example.net;rcpt to=*@example.test;"
      "client=127.0.0.0/8");
  if (!rule.ok()) std::abort();
  v1::Event e;
  e.set_type(v1::EVENT_TYPE_RCPT);
  e.mutable_envelope()->set_mail_from("bench@example.net");
  for (int i = 0; i < 5; ++i) {
    e.mutable_envelope()->add_recipients()->set_address(
        "user" + std::to_string(i) + "@example.test");
  }
  e.mutable_session()->mutable_client()->set_ip("127.0.0.1");
  for (auto _ : state) benchmark::DoNotOptimize(rule->Matches(e));
}
BENCHMARK(BM_RuleMatch);

// ---- Chain dispatch --------------------------------------------------------

// Answers every binding CONTINUE at once, on the calling thread.
class ContinueInvoker : public sb::SinkInvoker {
 public:
  void Invoke(const sb::SinkConfig&, std::shared_ptr<const v1::SinkRequest>,
              std::chrono::system_clock::time_point, Done done) override {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    done(v);
  }
};

// One MAIL event through a chain of range(0) bindings around the native
// handler (no gRPC: what the engine itself costs per event).
void BM_ChainDispatch(benchmark::State& state) {
  std::string yaml = "sinks:\n  - name: fake\n    target: fake:1\nbindings:\n";
  if (state.range(0) == 0) yaml += "  []\n";
  for (int i = 0; i < state.range(0); ++i) {
    yaml += "  - name: b" + std::to_string(i) +
            "\n    sink: fake\n    event: MAIL\n    priority: " +
            std::to_string(100 + i) + "\n";
  }
  auto parsed = sb::ParseConfig(yaml, "bench.yaml");
  if (!parsed.ok()) std::abort();
  auto config = std::make_shared<const sb::Config>(std::move(*parsed));
  asio::thread_pool pool(1);
  ContinueInvoker sinks;
  sb::LeaseTable leases(pool);
  sb::MessageTable messages;
  sb::ChainOptions options{.advertise = "127.0.0.1:1"};
  sb::ChainEnv env{.sinks = &sinks,
                   .leases = &leases,
                   .messages = &messages,
                   .options = &options,
                   .finished = [](const std::string&, const std::string&) {},
                   .quarantined = nullptr,
                   .envelope_published = nullptr};
  v1::Event event;
  event.set_type(v1::EVENT_TYPE_MAIL);
  event.set_transaction_id("T1");
  event.mutable_envelope()->set_mail_from("a@example.net");
  *event.mutable_native_reply() = sb::MakeReply(250, "2.1.0", "Ok");
  auto strand = asio::make_strand(pool);
  for (auto _ : state) {
    std::promise<void> done;
    auto run = std::make_shared<sb::ChainRun>(env, strand, config, event);
    asio::post(strand, [run, &done] {
      run->Run([](sb::ChainRun&) { return sb::NativeResult::kReply; }, nullptr,
               [&done](sb::ChainRun&) { done.set_value(); });
    });
    done.get_future().wait();
  }
  pool.join();
}
BENCHMARK(BM_ChainDispatch)
    ->ArgName("bindings")
    ->Arg(0)
    ->Arg(1)
    ->Arg(5)
    ->UseRealTime();

// ---- The store's commit ----------------------------------------------------

// A 5,000-octet message written to incoming/ and committed (content fsync,
// rename, directory fsync, envelope record as one durable store write) on
// a temporary directory.
void BM_StoreCommit(benchmark::State& state) {
  const fs::path dir = fs::temp_directory_path() /
                       ("sinkline-micro-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string spool_dir = (dir / "spool").string();
  const sb::Spool spool(spool_dir);
  if (!spool.Prepare().ok()) std::abort();
  const std::string body = Body(5000);
  uint64_t n = 0;
  for (auto _ : state) {
    const std::string qid = "Q" + std::to_string(++n);
    auto m = sb::IncomingMessage::Create(spool_dir, qid);
    if (!m.ok() || !(*m)->Append(body).ok()) std::abort();
    v1::QueueEntry entry;
    entry.set_queue_id(qid);
    entry.mutable_envelope()->set_mail_from("a@example.net");
    entry.mutable_envelope()->add_recipients()->set_address("b@example.test");
    if (!(*m)->Commit(spool, entry).ok()) std::abort();
    state.PauseTiming();
    spool.RemoveCommitted(qid);
    state.ResumeTiming();
  }
  fs::remove_all(dir);
}
BENCHMARK(BM_StoreCommit)->UseRealTime();

// ---- Header edits ----------------------------------------------------------

// Parses the header block of a 5,000-octet message and applies what
// dkim-sign asks for (one header added at the top) and what a filter
// might (one changed, one removed).
void BM_HeaderEdits(benchmark::State& state) {
  const std::string message = Body(5000);
  std::vector<v1::ContentEdit> edits(3);
  edits[0].mutable_add_header()->set_name("DKIM-Signature");
  edits[0].mutable_add_header()->set_value(
      "v=1; a=rsa-sha256; d=example.test; s=bench; " + std::string(340, 'b'));
  edits[1].mutable_change_header()->set_name("Subject");
  edits[1].mutable_change_header()->set_value("[tagged] micro");
  edits[2].mutable_delete_header()->set_name("Message-ID");
  for (auto _ : state) {
    sb::ParsedHeader header = sb::ParseHeader(message);
    const std::string* body = nullptr;
    auto st = sb::ApplyHeaderEdits(edits, header, &body);
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(header);
  }
}
BENCHMARK(BM_HeaderEdits);

}  // namespace

BENCHMARK_MAIN();
