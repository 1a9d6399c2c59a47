// Recovery on a spool laid out by the test: partial commits go, failed and
// held messages are listed as they were, unfinished post-COMMIT bindings run
// again as redeliveries, and each recovered message is submitted once.
#include "sink_broker/recovery.h"

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

class RecordingInvoker : public SinkInvoker {
 public:
  void Invoke(const SinkConfig&, std::shared_ptr<const v1::SinkRequest> req,
              std::chrono::system_clock::time_point, Done done) override {
    {
      absl::MutexLock lock(&mu_);
      requests.push_back(*req);
    }
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    done(v);
  }
  std::vector<v1::SinkRequest> Requests() {
    absl::MutexLock lock(&mu_);
    return requests;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::SinkRequest> requests ABSL_GUARDED_BY(mu_);
};

class CountingBackend : public QueueBackend {
 public:
  absl::StatusOr<SubmitOutcome> Submit(const v1::QueueEntry& e,
                                       const std::string&) override {
    absl::MutexLock lock(&mu_);
    ids_.push_back(e.queue_id());
    return SubmitOutcome{};
  }
  std::string Describe() const override { return "counting"; }
  std::vector<std::string> Ids() {
    absl::MutexLock lock(&mu_);
    return ids_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> ids_ ABSL_GUARDED_BY(mu_);
};

TEST(RecoveryTest, TakesOverWhatAPreviousRunLeft) {
  const fs::path dir = fs::path(::testing::TempDir()) / "recovery-spool";
  fs::remove_all(dir);
  const Spool spool(dir.string());
  ASSERT_TRUE(spool.Prepare().ok());
  auto commit = [&](const std::string& id) {
    v1::QueueEntry e;
    e.set_queue_id(id);
    e.mutable_envelope()->set_mail_from("a@example.net");
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    std::ofstream(spool.ContentPath(id)) << "Subject: " << id << "\r\n\r\n";
    ASSERT_TRUE(spool.WriteEnvelope(e).ok());
  };
  commit("QRESUME");
  spool.MarkFinished("QRESUME", "archive");
  commit("QHELD");
  ASSERT_TRUE(
      spool.WriteHold("QHELD", v1::MESSAGE_STATE_QUARANTINED, "virus").ok());
  commit("QFAILED");
  ASSERT_TRUE(spool.MoveToFailed("QFAILED", "550 unknown user").ok());
  std::ofstream(dir / "committed" / "QPARTIAL.msg") << "no record";

  auto config = ParseConfig(
      "sinks:\n  - name: s\n    target: fake:1\nbindings:\n"
      "  - name: pre\n    sink: s\n    event: EOD\n    priority: 10\n"
      "  - name: archive\n    sink: s\n    event: EOD\n    priority: 30000\n"
      "  - name: stamp\n    sink: s\n    event: EOD\n    priority: 30001\n",
      "test.yaml");
  ASSERT_TRUE(config.ok()) << config.status();

  boost::asio::thread_pool pool(2);
  RecordingInvoker sinks;
  CountingBackend backend;
  MessageTable messages;
  LeaseTable leases(pool);
  ChainOptions options;
  std::vector<std::string> finished;
  absl::Mutex mu;
  ChainEnv env{.sinks = &sinks,
               .leases = &leases,
               .messages = &messages,
               .options = &options,
               .finished =
                   [&](const std::string& id, const std::string& b) {
                     absl::MutexLock lock(&mu);
                     finished.push_back(id + ":" + b);
                   },
               .quarantined = nullptr,
               .envelope_published = nullptr};
  Submitter submitter(SubmitOptions{.workers = 1}, backend, spool, messages,
                      leases, pool);
  const RecoveryCounts counts = RecoverSpool(
      spool, messages, env, std::make_shared<const Config>(std::move(*config)),
      pool, submitter);
  EXPECT_EQ(counts.partial_files_removed, 1);
  EXPECT_EQ(counts.failed, 1);
  EXPECT_EQ(counts.held, 1);
  EXPECT_EQ(counts.resumed, 1);
  for (int i = 0; i < 500 && backend.Ids().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  submitter.CancelRetries();
  pool.join();
  submitter.Join();

  EXPECT_EQ(backend.Ids(), (std::vector<std::string>{"QRESUME"}));
  const auto reqs = sinks.Requests();
  ASSERT_EQ(reqs.size(), 1u);  // only the binding that had not finished
  EXPECT_EQ(reqs[0].binding(), "stamp");
  EXPECT_TRUE(reqs[0].redelivery());
  EXPECT_TRUE(reqs[0].after_commit());
  EXPECT_EQ(finished, (std::vector<std::string>{"QRESUME:stamp"}));
  EXPECT_EQ(messages.State("QHELD"), v1::MESSAGE_STATE_QUARANTINED);
  EXPECT_EQ(messages.State("QFAILED"), v1::MESSAGE_STATE_FAILED);
  EXPECT_EQ(messages.State("QRESUME"), v1::MESSAGE_STATE_SUBMITTED);
  EXPECT_FALSE(fs::exists(dir / "committed" / "QPARTIAL.msg"));
  EXPECT_TRUE(fs::exists(spool.ContentPath("QHELD")));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sinkline::broker
