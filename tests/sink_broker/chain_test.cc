// Chain semantics through the broker's real session stream, with fake sinks
// served in-process.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "sink_broker/broker.h"
#include "sink_broker/queue_dir.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/grpc_server.h"
#include "tests/sink_broker/binding_yaml.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;
using Behaviour =
    std::function<grpc::Status(const v1::SinkRequest&, v1::Verdict*)>;

class FakeSinks final : public v1::Sink::CallbackService {
 public:
  void Set(const std::string& binding, Behaviour b) {
    absl::MutexLock lock(&mu_);
    behaviours_[binding] = std::move(b);
  }
  std::vector<std::string> Calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::vector<v1::SinkRequest> Requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

  grpc::ServerUnaryReactor* OnEvent(grpc::CallbackServerContext* ctx,
                                    const v1::SinkRequest* req,
                                    v1::Verdict* verdict) override {
    Behaviour b;
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back(req->binding());
      requests_.push_back(*req);
      b = behaviours_[req->binding()];
    }
    verdict->set_action(v1::ACTION_CONTINUE);
    grpc::Status st = b ? b(*req, verdict) : grpc::Status::OK;
    auto* r = ctx->DefaultReactor();
    r->Finish(st);
    return r;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, Behaviour> behaviours_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::SinkRequest> requests_ ABSL_GUARDED_BY(mu_);
};

v1::Reply R(uint32_t code, const std::string& enh, const std::string& text) {
  v1::Reply r;
  r.set_code(code);
  r.set_enhanced_code(enh);
  r.add_lines(text);
  return r;
}

Behaviour Reply(v1::Action action, v1::Reply reply) {
  return [=](const v1::SinkRequest&, v1::Verdict* v) {
    v->set_action(action);
    *v->mutable_reply() = reply;
    return grpc::Status::OK;
  };
}

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sinkline-chain-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    ASSERT_TRUE(Spool((dir_ / "spool").string()).Prepare().ok());
    auto sinks = StartGrpcServer("127.0.0.1:0", {&fake_});
    ASSERT_TRUE(sinks.ok());
    sinks_ = std::move(*sinks);
  }
  void TearDown() override {
    stream_.reset();
    ctx_.reset();
    if (broker_server_.server) broker_server_.Stop();
    broker_.reset();
    sinks_.Stop();
    fs::remove_all(dir_);
  }

  // bindings: YAML list items for sink "fake".
  void StartBroker(const std::string& bindings) {
    const std::string yaml = "sinks:\n  - name: fake\n    target: 127.0.0.1:" +
                             std::to_string(sinks_.port) + "\nbindings:\n" +
                             bindings;
    auto config = ParseConfig(yaml, "test.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    auto queue = QueueDirBackend::Create((dir_ / "queue").string());
    ASSERT_TRUE(queue.ok());
    BrokerOptions opts;
    opts.spool_dir = (dir_ / "spool").string();
    opts.advertise = "127.0.0.1:1";
    opts.received_header = false;  // exact bytes below
    opts.edge_guard = EdgeGuard("", {}, /*allow_loopback=*/true);
    broker_ =
        std::make_unique<Broker>(opts, std::move(*config), std::move(*queue));
    auto server = StartGrpcServer("127.0.0.1:0", {broker_->session_service()});
    ASSERT_TRUE(server.ok());
    broker_server_ = std::move(*server);
    auto channel =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(broker_server_.port),
                            grpc::InsecureChannelCredentials());
    stub_ = v1::SessionService::NewStub(channel);
    ctx_ = std::make_unique<grpc::ClientContext>();
    stream_ = stub_->Stream(ctx_.get());
    v1::SessionRequest start;
    start.mutable_start()->mutable_session()->set_session_id("S1");
    ASSERT_TRUE(stream_->Write(start));
    v1::SessionResponse first;
    ASSERT_TRUE(stream_->Read(&first));
    ASSERT_TRUE(first.has_binding_map());
  }

  v1::EventResult Send(v1::Event event) {
    event.set_sequence(++seq_);
    if (event.native_reply().code() == 0) {
      *event.mutable_native_reply() = R(250, "2.0.0", "native");
    }
    v1::SessionRequest req;
    *req.mutable_event() = event;
    EXPECT_TRUE(stream_->Write(req));
    v1::SessionResponse resp;
    EXPECT_TRUE(stream_->Read(&resp));
    EXPECT_EQ(resp.result().sequence(), seq_);
    return resp.result();
  }

  void SendData(const std::string& tx, const std::string& data) {
    v1::SessionRequest req;
    req.mutable_data()->set_transaction_id(tx);
    req.mutable_data()->set_data(data);
    ASSERT_TRUE(stream_->Write(req));
  }

  static v1::Event Ev(v1::EventType type) {
    v1::Event e;
    e.set_type(type);
    e.set_transaction_id("T1");
    e.mutable_envelope()->set_mail_from("a@example.net");
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    return e;
  }

  std::string QueueFile(const std::string& id) {
    const auto path = dir_ / "queue" / "new" / id;
    for (int i = 0; i < 200 && !fs::exists(path); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  fs::path dir_;
  FakeSinks fake_;
  GrpcServer sinks_;
  std::unique_ptr<Broker> broker_;
  GrpcServer broker_server_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>>
      stream_;
  uint64_t seq_ = 0;
};

using test_support::Binding;

TEST_F(ChainTest, RunsByPriorityThenNameAndLastReplyWins) {
  StartBroker(Binding("b", "MAIL", 100) + Binding("a", "MAIL", 100) +
              Binding("c", "MAIL", 30000) + Binding("d", "RCPT", 1));
  fake_.Set("a", Reply(v1::ACTION_CONTINUE, R(250, "2.1.0", "from a")));
  auto r = Send(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(fake_.Calls(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(r.reply().lines(0), "from a");
  EXPECT_FALSE(r.close_session());
}

TEST_F(ChainTest, NativeReplyWhenNoSinkAnswers) {
  StartBroker(Binding("a", "MAIL", 100));
  auto r = Send(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(r.reply().code(), 250u);
  EXPECT_EQ(r.reply().lines(0), "native");
}

TEST_F(ChainTest, ConsumeStopsTheChain) {
  StartBroker(Binding("a", "RCPT", 10) + Binding("b", "RCPT", 20) +
              Binding("c", "RCPT", 30000));
  fake_.Set("b", Reply(v1::ACTION_CONSUME, R(550, "5.1.1", "no such user")));
  auto r = Send(Ev(v1::EVENT_TYPE_RCPT));
  EXPECT_EQ(fake_.Calls(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.reply().code(), 550u);
  EXPECT_EQ(r.reply().enhanced_code(), "5.1.1");
}

TEST_F(ChainTest, DropSessionClosesWith421) {
  StartBroker(Binding("a", "HELO", 10));
  fake_.Set("a", [](const v1::SinkRequest&, v1::Verdict* v) {
    v->set_action(v1::ACTION_CONSUME);
    *v->mutable_reply() = R(421, "4.7.0", "go away");
    v->set_drop_session(true);
    return grpc::Status::OK;
  });
  auto r = Send(Ev(v1::EVENT_TYPE_HELO));
  EXPECT_EQ(r.reply().code(), 421u);
  EXPECT_TRUE(r.close_session());
}

TEST_F(ChainTest, FailurePoliciesOnErrors) {
  StartBroker(Binding("t", "MAIL", 10, "    failure_policy: tempfail\n") +
              Binding("r", "RCPT", 10, "    failure_policy: reject\n") +
              Binding("c", "DATA", 10, "    failure_policy: continue\n"));
  auto fail = [](const v1::SinkRequest&, v1::Verdict*) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
  };
  fake_.Set("t", fail);
  fake_.Set("r", fail);
  fake_.Set("c", fail);
  auto t = Send(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(t.reply().code(), 451u);
  EXPECT_EQ(t.reply().enhanced_code(), "4.3.0");
  auto r = Send(Ev(v1::EVENT_TYPE_RCPT));
  EXPECT_EQ(r.reply().code(), 554u);
  EXPECT_EQ(r.reply().enhanced_code(), "5.7.0");
  auto c = Send(Ev(v1::EVENT_TYPE_DATA));
  EXPECT_EQ(c.reply().lines(0), "native");
}

TEST_F(ChainTest, DeadlineIsAFailure) {
  StartBroker(Binding("slow", "MAIL", 10,
                      "    deadline_ms: 100\n    failure_policy: tempfail\n"));
  fake_.Set("slow", [](const v1::SinkRequest&, v1::Verdict* v) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    v->set_action(v1::ACTION_CONSUME);
    *v->mutable_reply() = R(250, "2.0.0", "too late");
    return grpc::Status::OK;
  });
  auto r = Send(Ev(v1::EVENT_TYPE_MAIL));
  EXPECT_EQ(r.reply().code(), 451u);
}

TEST_F(ChainTest, InvalidVerdictsAreFailures) {
  struct Case {
    v1::Action action;
    v1::Reply reply;
  } cases[] = {
      {v1::ACTION_CONSUME, R(250, "5.1.1", "class mismatch")},
      {v1::ACTION_CONSUME, R(550, "5.1.1", "line\r\nbreak")},
      {v1::ACTION_CONSUME, R(354, "3.0.0", "no")},
      {v1::ACTION_CONSUME, R(0, "", "")},
      {v1::ACTION_UNSPECIFIED, R(250, "2.0.0", "no action")},
  };
  StartBroker(Binding("bad", "MAIL", 10, "    failure_policy: tempfail\n"));
  for (const auto& c : cases) {
    fake_.Set("bad", Reply(c.action, c.reply));
    auto r = Send(Ev(v1::EVENT_TYPE_MAIL));
    EXPECT_EQ(r.reply().code(), 451u) << c.reply.DebugString();
  }
}

TEST_F(ChainTest, ContentEditNeedsWriteAccess) {
  StartBroker(Binding("ro", "EOD", 10,
                      "    content_access: read\n"
                      "    failure_policy: reject\n"));
  fake_.Set("ro", [](const v1::SinkRequest&, v1::Verdict* v) {
    auto* add = v->add_content_edits()->mutable_add_header();
    add->set_name("X-A");
    add->set_value("1");
    return grpc::Status::OK;
  });
  SendData("T1", "Subject: x\r\n\r\nbody\r\n");
  auto r = Send(Ev(v1::EVENT_TYPE_EOD));
  EXPECT_EQ(r.reply().code(), 554u);
  EXPECT_TRUE(r.queue_id().empty());
}

TEST_F(ChainTest, EodCommitsThenLateSinksEditBeforeSubmission) {
  StartBroker(
      Binding("early", "EOD", 100, "    content_access: read-write\n") +
      Binding("late", "EOD", 30000, "    content_access: read-write\n"));
  auto stamp = [](const std::string& name) {
    return [name](const v1::SinkRequest& req, v1::Verdict* v) {
      auto* add = v->add_content_edits()->mutable_add_header();
      add->set_name("X-" + name);
      add->set_value(req.event().queue_id().empty() ? "before"
                                                    : req.event().queue_id());
      return grpc::Status::OK;
    };
  };
  fake_.Set("early", stamp("Early"));
  fake_.Set("late", stamp("Late"));
  SendData("T1", "Subject: x\r\n\r\n");
  SendData("T1", "body\r\n");
  auto r = Send(Ev(v1::EVENT_TYPE_EOD));
  ASSERT_EQ(r.reply().code(), 250u);
  ASSERT_FALSE(r.queue_id().empty());
  EXPECT_EQ(r.reply().lines(0), "Ok: queued as " + r.queue_id());
  const std::string q = QueueFile(r.queue_id());
  const std::string message = q.substr(q.find('\n') + 1);
  EXPECT_EQ(message, "X-Late: " + r.queue_id() +
                         "\r\nX-Early: before\r\nSubject: x\r\n\r\nbody\r\n");
  EXPECT_NE(q.find("\"queue_id\":\"" + r.queue_id() + "\""), std::string::npos);
  // Sinks with content access got a lease and the message inline; the late
  // one saw the early one's edit and knew it ran after COMMIT.
  auto reqs = fake_.Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].lease().token().size(), 64u);
  EXPECT_NE(reqs[0].lease().token(), reqs[1].lease().token());
  EXPECT_FALSE(reqs[0].after_commit());
  EXPECT_TRUE(reqs[1].after_commit());
  EXPECT_TRUE(reqs[1].content_inline());
  EXPECT_EQ(reqs[1].inline_content(),
            "X-Early: before\r\nSubject: x\r\n\r\nbody\r\n");
}

TEST_F(ChainTest, LateRejectionQuarantinesInsteadOfDropping) {
  StartBroker(Binding("late", "EOD", 30000, "    failure_policy: reject\n"));
  fake_.Set("late", Reply(v1::ACTION_CONSUME, R(550, "5.7.1", "no")));
  SendData("T1", "Subject: x\r\n\r\nbody\r\n");
  auto r = Send(Ev(v1::EVENT_TYPE_EOD));
  ASSERT_EQ(r.reply().code(), 250u);  // the client already has its answer
  for (int i = 0; i < 100 && fake_.Calls().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(fs::exists(dir_ / "queue" / "new" / r.queue_id()));
  EXPECT_TRUE(
      fs::exists(Spool((dir_ / "spool").string()).ContentPath(r.queue_id())));
}

TEST_F(ChainTest, ChunkThatCouldNotBeStoredFailsTheTransaction) {
  StartBroker(Binding("late", "EOD", 30000));
  // incoming/ is not a directory: the first chunk cannot be stored.
  const fs::path incoming = dir_ / "spool" / "incoming";
  fs::remove_all(incoming);
  { std::ofstream(incoming) << "not a directory"; }
  SendData("T1", "Subject: lost\r\n\r\n");
  // A reply on the same stream: the chunk before it has been handled.
  EXPECT_EQ(Send(Ev(v1::EVENT_TYPE_RCPT)).reply().code(), 250u);
  fs::remove(incoming);
  fs::create_directory(incoming);
  SendData("T1", "body\r\n");
  auto r = Send(Ev(v1::EVENT_TYPE_EOD));
  EXPECT_EQ(r.reply().code(), 451u);
  EXPECT_EQ(r.reply().enhanced_code(), "4.3.0");
  EXPECT_TRUE(r.queue_id().empty());
  EXPECT_TRUE(fs::is_empty(dir_ / "spool" / "committed"));
  EXPECT_TRUE(fake_.Calls().empty());
}

TEST_F(ChainTest, LateRefusalIsDurableBeforeTheBindingCountsAsFinished) {
  // "holder" keeps its lease, so the chain is over but the message waits:
  // a crash now must find the refusal in the spool, not only the .done.
  StartBroker(Binding("holder", "EOD", 25000, "    content_access: read\n") +
              Binding("late", "EOD", 30000, "    failure_policy: reject\n"));
  fake_.Set("holder", [](const v1::SinkRequest&, v1::Verdict* v) {
    v->set_hold_lease(true);
    return grpc::Status::OK;
  });
  fake_.Set("late", Reply(v1::ACTION_CONSUME, R(550, "5.7.1", "virus found")));
  SendData("T1", "Subject: x\r\n\r\nbody\r\n");
  auto r = Send(Ev(v1::EVENT_TYPE_EOD));
  ASSERT_EQ(r.reply().code(), 250u);
  const Spool spool((dir_ / "spool").string());
  for (int i = 0; i < 200 && !spool.Finished(r.queue_id()).count("late"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(spool.Finished(r.queue_id()).count("late"));
  auto hold = spool.ReadHold(r.queue_id());
  ASSERT_TRUE(hold.has_value()) << "refused, finished, and not quarantined";
  EXPECT_EQ(hold->state, v1::MESSAGE_STATE_QUARANTINED);
  EXPECT_NE(hold->reason.find("late answered 550"), std::string::npos)
      << hold->reason;
  EXPECT_FALSE(fs::exists(dir_ / "queue" / "new" / r.queue_id()));
}

TEST(ValidateReply, Table) {
  EXPECT_TRUE(ValidateReply(R(250, "2.0.0", "ok")).ok());
  EXPECT_TRUE(ValidateReply(R(451, "4.7.1", "later")).ok());
  EXPECT_TRUE(ValidateReply(R(550, "5.1.10", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(199, "1.0.0", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(600, "6.0.0", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(250, "", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(250, "2.0", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(250, "2.0.x", "x")).ok());
  EXPECT_FALSE(ValidateReply(R(250, "2.0.0", "a\rb")).ok());
}

}  // namespace
}  // namespace sinkline::broker
