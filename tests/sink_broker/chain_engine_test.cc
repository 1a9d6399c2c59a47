// The chain engine alone: ChainRun with a fake SinkInvoker, no gRPC, no
// spool. Ordering, CONSUME, failure policies, deadlines, edits and the
// post-COMMIT bookkeeping.
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "sink_broker/chain.h"
#include "sink_broker/config.h"
#include "sink_broker/verdict.h"
#include "tests/sink_broker/binding_yaml.h"

namespace sinkline::broker {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;

// Answers each binding as told, at once, on the calling thread.
class FakeInvoker : public SinkInvoker {
 public:
  using Answer = std::function<absl::StatusOr<v1::Verdict>(
      const v1::SinkRequest&, std::chrono::system_clock::time_point)>;
  void Set(const std::string& binding, Answer a) {
    absl::MutexLock lock(&mu_);
    answers_[binding] = std::move(a);
  }
  std::vector<v1::SinkRequest> Requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  std::vector<std::string> Calls() {
    std::vector<std::string> out;
    for (const auto& r : Requests()) out.push_back(r.binding());
    return out;
  }
  std::vector<std::string> Targets() {
    absl::MutexLock lock(&mu_);
    return targets_;
  }
  void Invoke(const SinkConfig& sink,
              std::shared_ptr<const v1::SinkRequest> req,
              std::chrono::system_clock::time_point deadline,
              Done done) override {
    Answer a;
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*req);
      targets_.push_back(sink.target);
      a = answers_[req->binding()];
    }
    if (!a) {
      v1::Verdict v;
      v.set_action(v1::ACTION_CONTINUE);
      return done(v);
    }
    done(a(*req, deadline));
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, Answer> answers_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::SinkRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> targets_ ABSL_GUARDED_BY(mu_);
};

FakeInvoker::Answer Verdict(v1::Action action, uint32_t code = 0,
                            const std::string& enh = "",
                            const std::string& text = "") {
  return [=](const v1::SinkRequest&, auto) -> absl::StatusOr<v1::Verdict> {
    v1::Verdict v;
    v.set_action(action);
    if (code != 0) *v.mutable_reply() = MakeReply(code, enh, text);
    return v;
  };
}

using test_support::Binding;

// What a finished run left.
struct Outcome {
  v1::Reply reply;
  bool consumed = false;
  bool close = false;
  bool envelope_changed = false;
  v1::Envelope envelope;
  std::string quarantine;
  bool native_ran = false;
};

class ChainEngineTest : public ::testing::Test {
 protected:
  void TearDown() override {
    pool_.join();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  void Configure(const std::string& bindings,
                 const std::string& target = "fake:1") {
    auto c = ParseConfig("sinks:\n  - name: fake\n    target: " + target +
                             "\nbindings:\n" + bindings,
                         "test.yaml");
    ASSERT_TRUE(c.ok()) << c.status();
    config_ = std::make_shared<const Config>(std::move(*c));
  }

  ChainEnv Env() {
    return ChainEnv{.sinks = &sinks_,
                    .leases = &leases_,
                    .messages = &messages_,
                    .options = &options_,
                    .finished =
                        [this](const std::string& id, const std::string& b) {
                          absl::MutexLock lock(&mu_);
                          finished_.insert(id + ":" + b);
                        },
                    .quarantined = nullptr,
                    .envelope_published = nullptr};
  }

  static v1::Event Ev(v1::EventType type) {
    v1::Event e;
    e.set_type(type);
    e.set_transaction_id("T1");
    e.mutable_envelope()->set_mail_from("a@example.net");
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    *e.mutable_native_reply() = MakeReply(250, "2.0.0", "native");
    return e;
  }

  // Runs `event` through its chain; the native handler notes that it ran
  // (and, with `commit_as`, plays COMMIT: the queue id and a 250).
  Outcome Run(v1::Event event, std::shared_ptr<MessageRecord> message = nullptr,
              const std::string& commit_as = "") {
    auto run = std::make_shared<ChainRun>(Env(), asio::make_strand(pool_),
                                          config_, std::move(event));
    run->message = message;
    std::promise<Outcome> done;
    auto native_ran = std::make_shared<bool>(false);
    asio::post(pool_, [&, run, native_ran] {
      run->Run(
          [&, native_ran](ChainRun& r) {
            *native_ran = true;
            if (!commit_as.empty()) {
              r.mutable_event().set_queue_id(commit_as);
              if (message) message->set_queue_id(commit_as);
              r.set_reply(MakeReply(250, "2.0.0", "queued as " + commit_as));
            }
            return NativeResult::kReply;
          },
          nullptr,
          [&, native_ran](ChainRun& r) {
            done.set_value(Outcome{r.reply(), r.consumed(), r.close_session(),
                                   r.envelope_changed(), r.envelope(),
                                   r.quarantine_reason(), *native_ran});
          });
    });
    auto f = done.get_future();
    EXPECT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    return f.get();
  }

  // A message on disk with a record as the session stream makes one.
  std::shared_ptr<MessageRecord> Message(const std::string& content) {
    dir_ = fs::path(::testing::TempDir()) /
           ("chain-engine-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    const std::string path = (dir_ / "m.msg").string();
    std::ofstream(path, std::ios::binary) << content;
    auto record = std::make_shared<MessageRecord>(
        path,
        [](const std::vector<v1::ContentEdit>&) { return absl::OkStatus(); });
    v1::Envelope env;
    env.set_mail_from("a@example.net");
    env.add_recipients()->set_address("b@example.test");
    record->set_envelope(env);
    return record;
  }

  std::set<std::string> Finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

  asio::thread_pool pool_{2};
  FakeInvoker sinks_;
  LeaseTable leases_{pool_};
  MessageTable messages_;
  ChainOptions options_{.advertise = "127.0.0.1:1"};
  std::shared_ptr<const Config> config_;
  fs::path dir_;
  absl::Mutex mu_;
  std::set<std::string> finished_ ABSL_GUARDED_BY(mu_);
};

TEST_F(ChainEngineTest, ByPriorityThenNameAroundTheNativeHandler) {
  Configure(Binding("b", "MAIL", 100) + Binding("a", "MAIL", 100) +
            Binding("late", "MAIL", 30000) + Binding("first", "MAIL", 0) +
            Binding("other", "RCPT", 1));
  sinks_.Set("a", Verdict(v1::ACTION_CONTINUE, 250, "2.1.0", "from a"));
  const Outcome o = Run(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(sinks_.Calls(),
            (std::vector<std::string>{"first", "a", "b", "late"}));
  EXPECT_TRUE(o.native_ran);
  EXPECT_EQ(o.reply.lines(0), "from a");  // a sink's reply wins
  const auto reqs = sinks_.Requests();
  EXPECT_FALSE(reqs[2].after_commit());
  EXPECT_TRUE(reqs[3].after_commit());
  EXPECT_EQ(reqs[1].priority(), 100u);
}

TEST_F(ChainEngineTest, RulesSelectBindings) {
  Configure(
      Binding("corp", "MAIL", 10, "    rule: \"mail from=*@corp.example\"\n") +
      Binding("all", "MAIL", 20));
  Run(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"all"}));
}

TEST_F(ChainEngineTest, ConsumeStopsTheChainAndSkipsTheNativeHandler) {
  Configure(Binding("a", "RCPT", 10) + Binding("b", "RCPT", 20) +
            Binding("c", "RCPT", 30000));
  sinks_.Set("a", Verdict(v1::ACTION_CONSUME, 550, "5.1.1", "no such user"));
  const Outcome o = Run(Ev(v1::EVENT_TYPE_RCPT));
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"a"}));
  EXPECT_FALSE(o.native_ran);
  EXPECT_TRUE(o.consumed);
  EXPECT_EQ(o.reply.code(), 550u);
}

TEST_F(ChainEngineTest, DropSessionGets421) {
  Configure(Binding("a", "HELO", 10));
  sinks_.Set("a", [](const v1::SinkRequest&, auto) {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    v.set_drop_session(true);
    return absl::StatusOr<v1::Verdict>(v);
  });
  const Outcome o = Run(Ev(v1::EVENT_TYPE_HELO));
  EXPECT_TRUE(o.close);
  EXPECT_EQ(o.reply.code(), 421u);
}

TEST_F(ChainEngineTest, FailurePolicies) {
  Configure(Binding("open", "MAIL", 10, "    failure_policy: continue\n") +
            Binding("temp", "MAIL", 20, "    failure_policy: tempfail\n") +
            Binding("after", "MAIL", 30));
  auto broken = [](const v1::SinkRequest&, auto) {
    return absl::StatusOr<v1::Verdict>(absl::UnavailableError("gone"));
  };
  sinks_.Set("open", broken);
  sinks_.Set("temp", broken);
  const Outcome o = Run(Ev(v1::EVENT_TYPE_MAIL));
  // continue: the chain goes on; tempfail: 451 4.3.0 and it stops.
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"open", "temp"}));
  EXPECT_EQ(o.reply.code(), 451u);
  EXPECT_EQ(o.reply.enhanced_code(), "4.3.0");
  EXPECT_FALSE(o.native_ran);

  Configure(Binding("rej", "MAIL", 10, "    failure_policy: reject\n"));
  sinks_.Set("rej", broken);
  const Outcome r = Run(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(r.reply.code(), 554u);
  EXPECT_EQ(r.reply.enhanced_code(), "5.7.0");
}

TEST_F(ChainEngineTest, InvalidVerdictIsAFailure) {
  Configure(Binding("bad", "MAIL", 10, "    failure_policy: tempfail\n"));
  // CONSUME before COMMIT needs a reply; a 3xx is no reply at all.
  sinks_.Set("bad", Verdict(v1::ACTION_CONSUME, 354, "3.0.0", "go on"));
  EXPECT_EQ(Run(Ev(v1::EVENT_TYPE_MAIL)).reply.code(), 451u);
  sinks_.Set("bad", Verdict(v1::ACTION_CONSUME));
  EXPECT_EQ(Run(Ev(v1::EVENT_TYPE_MAIL)).reply.code(), 451u);
}

TEST_F(ChainEngineTest, AcceptingEodBeforeCommitIsAnInvalidVerdict) {
  // A 2xx CONSUME before COMMIT would tell the client 250 for a message
  // that is never committed: it is a failure, and its policy applies.
  Configure(Binding("early", "EOD", 100, "    failure_policy: tempfail\n"));
  sinks_.Set("early", Verdict(v1::ACTION_CONSUME, 250, "2.0.0", "taken"));
  const Outcome o = Run(Ev(v1::EVENT_TYPE_EOD));
  EXPECT_EQ(o.reply.code(), 451u);
  EXPECT_EQ(o.reply.enhanced_code(), "4.3.0");
  EXPECT_FALSE(o.native_ran);
  // With failure_policy continue the chain goes on to COMMIT.
  Configure(Binding("early", "EOD", 100, "    failure_policy: continue\n"));
  const Outcome c = Run(Ev(v1::EVENT_TYPE_EOD), nullptr, "Q1");
  EXPECT_TRUE(c.native_ran);
  EXPECT_EQ(c.reply.lines(0), "queued as Q1");
  // A refusal (4xx/5xx) before COMMIT stays a valid CONSUME.
  sinks_.Set("early", Verdict(v1::ACTION_CONSUME, 550, "5.7.1", "no"));
  EXPECT_EQ(Run(Ev(v1::EVENT_TYPE_EOD)).reply.code(), 550u);
}

TEST_F(ChainEngineTest, DeadlinesBoundEachCallAndTheChain) {
  Configure(Binding("a", "MAIL", 10, "    deadline_ms: 700\n") +
            Binding("b", "MAIL", 20,
                    "    deadline_ms: 60000\n    failure_policy: tempfail\n"));
  std::chrono::system_clock::time_point seen_a, seen_b;
  const auto before = std::chrono::system_clock::now();
  sinks_.Set("a", [&](const v1::SinkRequest&, auto d) {
    seen_a = d;
    return Verdict(v1::ACTION_CONTINUE)(v1::SinkRequest(), d);
  });
  sinks_.Set("b", [&](const v1::SinkRequest&, auto d) {
    seen_b = d;
    return Verdict(v1::ACTION_CONTINUE)(v1::SinkRequest(), d);
  });
  options_.chain_deadline = std::chrono::milliseconds(5000);
  Run(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_LE(seen_a, before + std::chrono::milliseconds(800));
  EXPECT_GT(seen_a, before);
  // The binding allows a minute; the chain's budget is five seconds.
  EXPECT_LE(seen_b, before + std::chrono::milliseconds(5100));

  // A spent chain budget is a failure without calling the sink.
  options_.chain_deadline = std::chrono::milliseconds(0);
  const Outcome o = Run(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(o.reply.code(), 451u);
  EXPECT_EQ(sinks_.Calls().size(), 2u);
}

TEST_F(ChainEngineTest, EnvelopeEditsWithoutALeaseChangeTheEnvelope) {
  Configure(Binding("rw", "RCPT", 10, "    content_access: read-write\n") +
            Binding("ro", "RCPT", 20, "    failure_policy: continue\n"));
  sinks_.Set("rw", [](const v1::SinkRequest&, auto) {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    v.add_envelope_edits()->mutable_add_recipient()->set_address(
        "copy@example.test");
    return absl::StatusOr<v1::Verdict>(v);
  });
  sinks_.Set("ro", [](const v1::SinkRequest&, auto) {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    v.add_envelope_edits()->set_set_sender("evil@example.net");
    return absl::StatusOr<v1::Verdict>(v);
  });
  const Outcome o = Run(Ev(v1::EVENT_TYPE_RCPT));
  EXPECT_TRUE(o.envelope_changed);
  ASSERT_EQ(o.envelope.recipients_size(), 2);
  EXPECT_EQ(o.envelope.recipients(1).address(), "copy@example.test");
  // A sink without write access cannot edit: its verdict is a failure
  // (policy continue), the sender stays.
  EXPECT_EQ(o.envelope.mail_from(), "a@example.net");
  // The second sink saw the edited envelope.
  EXPECT_EQ(sinks_.Requests()[1].event().envelope().recipients_size(), 2);
}

// A verdict's envelope edits get the same mailbox grammar as the Content
// service and the edge: anything that is not a mailbox makes the verdict a
// failure and the envelope stays as it was.
TEST_F(ChainEngineTest, EnvelopeEditsInAVerdictAreMailboxes) {
  for (const std::string& bad :
       {std::string("no-domain"), std::string("a\0b@example.test", 16),
        std::string("a@example.test\x0b"
                    "DATA"),
        std::string("(c)a@example.test"),
        std::string("caf\xc3\xa9@example.test")}) {
    SCOPED_TRACE(bad);
    Configure(Binding("rw", "RCPT", 10,
                      "    content_access: read-write\n"
                      "    failure_policy: continue\n"));
    sinks_.Set("rw", [bad](const v1::SinkRequest&, auto) {
      v1::Verdict v;
      v.set_action(v1::ACTION_CONTINUE);
      v.add_envelope_edits()->mutable_add_recipient()->set_address(bad);
      v.add_envelope_edits()->set_set_sender(bad);
      return absl::StatusOr<v1::Verdict>(v);
    });
    const Outcome o = Run(Ev(v1::EVENT_TYPE_RCPT));
    EXPECT_FALSE(o.envelope_changed);
    EXPECT_EQ(o.envelope.mail_from(), "a@example.net");
    EXPECT_EQ(o.envelope.recipients_size(), 1);
  }
  // With SMTPUTF8 in the transaction a UTF-8 mailbox is fine.
  Configure(Binding("rw", "RCPT", 10, "    content_access: read-write\n"));
  sinks_.Set("rw", [](const v1::SinkRequest&, auto) {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    v.add_envelope_edits()->mutable_add_recipient()->set_address(
        "caf\xc3\xa9@example.test");
    return absl::StatusOr<v1::Verdict>(v);
  });
  v1::Event e = Ev(v1::EVENT_TYPE_RCPT);
  e.mutable_envelope()->add_mail_params()->set_key("SMTPUTF8");
  const Outcome o = Run(e);
  EXPECT_TRUE(o.envelope_changed);
  EXPECT_EQ(o.envelope.recipients_size(), 2);
}

TEST_F(ChainEngineTest, SinksWithContentAccessGetALeaseAndTheContent) {
  Configure(Binding("reader", "EOD", 10, "    content_access: read\n") +
            Binding("writer", "EOD", 20, "    content_access: read-write\n"));
  auto message = Message("Subject: hi\r\n\r\nbody\r\n");
  sinks_.Set("writer", [](const v1::SinkRequest&, auto) {
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    v.add_envelope_edits()->set_set_sender("new@example.net");
    return absl::StatusOr<v1::Verdict>(v);
  });
  Run(Ev(v1::EVENT_TYPE_EOD), message);
  const auto reqs = sinks_.Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_FALSE(reqs[0].lease().token().empty());
  EXPECT_EQ(reqs[0].lease().content_endpoint(), "127.0.0.1:1");
  EXPECT_TRUE(reqs[0].content_inline());
  EXPECT_EQ(reqs[0].inline_content(), "Subject: hi\r\n\r\nbody\r\n");
  EXPECT_EQ(reqs[0].lease().access(), v1::CONTENT_ACCESS_READ);
  // The writer's edit went through its lease, published when it ended.
  EXPECT_EQ(message->envelope().mail_from(), "new@example.net");
  EXPECT_EQ(message->active_leases(), 0);
  EXPECT_EQ(leases_.active(), 0u);
}

TEST_F(ChainEngineTest, AfterCommitFinishedBindingsAndRefusalsAreKept) {
  Configure(Binding("stamp", "EOD", 30000) +
            Binding("scan", "EOD", 30001, "    content_access: read\n") +
            Binding("never", "EOD", 30002));
  auto message = Message("Subject: x\r\n\r\nEICAR\r\n");
  sinks_.Set("scan", Verdict(v1::ACTION_CONSUME, 554, "5.7.1", "virus"));
  const Outcome o = Run(Ev(v1::EVENT_TYPE_EOD), message, "Q1");
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"stamp", "scan"}));
  EXPECT_EQ(o.reply.code(), 250u);  // the client had its reply at COMMIT
  EXPECT_NE(o.quarantine.find("scan answered 554"), std::string::npos);
  EXPECT_EQ(Finished(), (std::set<std::string>{"Q1:stamp", "Q1:scan"}));
}

TEST_F(ChainEngineTest, RecoveryRunsOnlyUnfinishedBindingsAsRedeliveries) {
  Configure(Binding("pre", "EOD", 10) + Binding("done", "EOD", 30000) +
            Binding("left", "EOD", 30001));
  auto message = Message("x\r\n");
  message->set_queue_id("Q1");
  auto run = std::make_shared<ChainRun>(Env(), asio::make_strand(pool_),
                                        config_, Ev(v1::EVENT_TYPE_EOD));
  run->message = message;
  run->RecoverAfterCommit({"done"});
  std::promise<void> done;
  asio::post(pool_, [&] {
    run->Run(nullptr, nullptr, [&](ChainRun&) { done.set_value(); });
  });
  ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(10)),
            std::future_status::ready);
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"left"}));
  EXPECT_TRUE(sinks_.Requests()[0].redelivery());
}

TEST_F(ChainEngineTest, SessionAffinityKeepsASessionOnOneReplica) {
  Configure(Binding("sticky", "RCPT", 10, "    session_affinity: true\n") +
                Binding("spread", "RCPT", 20),
            "ipv4:127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003");
  std::map<std::string, std::set<std::string>> replicas;
  for (int session = 0; session < 8; ++session) {
    for (int rcpt = 0; rcpt < 3; ++rcpt) {
      v1::Event e = Ev(v1::EVENT_TYPE_RCPT);
      e.mutable_session()->set_session_id("S" + std::to_string(session));
      Run(e);
    }
  }
  const auto targets = sinks_.Targets();
  const auto reqs = sinks_.Requests();
  ASSERT_EQ(targets.size(), reqs.size());
  std::set<std::string> used;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i].binding() == "spread") {
      // Without affinity the whole target goes to the channel.
      EXPECT_EQ(targets[i],
                "ipv4:127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003");
      continue;
    }
    replicas[reqs[i].event().session().session_id()].insert(targets[i]);
    used.insert(targets[i]);
  }
  ASSERT_EQ(replicas.size(), 8u);
  for (const auto& [session, targets_of] : replicas) {
    EXPECT_EQ(targets_of.size(), 1u) << session;  // one replica per session
    EXPECT_EQ(targets_of.begin()->find(','), std::string::npos);
  }
  EXPECT_GT(used.size(), 1u);  // and the sessions spread over replicas
}

TEST_F(ChainEngineTest, ADiscardBindingMayAcceptAndDropAtEod) {
  Configure(Binding("drop", "EOD", 10,
                    "    discard: true\n    failure_policy: tempfail\n") +
            Binding("after", "EOD", 20));
  sinks_.Set("drop", Verdict(v1::ACTION_CONSUME, 250, "2.0.0", "discarded"));
  const Outcome o = Run(Ev(v1::EVENT_TYPE_EOD));
  EXPECT_EQ(o.reply.code(), 250u);
  EXPECT_FALSE(o.native_ran);  // never committed
  EXPECT_EQ(sinks_.Calls(), (std::vector<std::string>{"drop"}));
}

}  // namespace
}  // namespace sinkline::broker
