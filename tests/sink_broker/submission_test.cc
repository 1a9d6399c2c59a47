// Submission with a fake backend: defer and retry, partial refusals, fail,
// too old, and operator release.
#include "sink_broker/submission.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

// Answers each Submit with the next scripted outcome (then OK).
class FakeBackend : public QueueBackend {
 public:
  void Script(absl::StatusOr<SubmitOutcome> next) {
    absl::MutexLock lock(&mu_);
    script_.push_back(std::move(next));
  }
  absl::StatusOr<SubmitOutcome> Submit(const v1::QueueEntry& entry,
                                       const std::string& path) override {
    absl::MutexLock lock(&mu_);
    seen_.push_back(entry);
    paths_.push_back(path);
    if (script_.empty()) return SubmitOutcome{};
    auto next = std::move(script_.front());
    script_.pop_front();
    return next;
  }
  std::string Describe() const override { return "fake"; }
  std::vector<v1::QueueEntry> Seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  std::vector<std::string> Paths() {
    absl::MutexLock lock(&mu_);
    return paths_;
  }

 private:
  absl::Mutex mu_;
  std::deque<absl::StatusOr<SubmitOutcome>> script_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::QueueEntry> seen_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> paths_ ABSL_GUARDED_BY(mu_);
};

v1::Recipient Rcpt(const std::string& a) {
  v1::Recipient r;
  r.set_address(a);
  return r;
}

class SubmissionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("submission-" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    spool_ = std::make_unique<Spool>(dir_.string());
    ASSERT_TRUE(spool_->Prepare().ok());
    submitter_ = std::make_unique<Submitter>(
        SubmitOptions{.workers = 1,
                      .retry_min = std::chrono::milliseconds(10),
                      .retry_max = std::chrono::milliseconds(40),
                      .max_queue_age = max_age_},
        backend_, *spool_, messages_, leases_, pool_);
  }
  void TearDown() override {
    submitter_->CancelRetries();
    pool_.join();
    submitter_->Join();
    fs::remove_all(dir_);
  }

  // A committed message in the spool, as COMMIT leaves it.
  v1::QueueEntry Commit(const std::string& id, int recipients = 1) {
    v1::QueueEntry e;
    e.set_queue_id(id);
    e.mutable_envelope()->set_mail_from("a@example.net");
    for (int i = 0; i < recipients; ++i) {
      *e.mutable_envelope()->add_recipients() =
          Rcpt("r" + std::to_string(i) + "@example.test");
    }
    *e.mutable_committed() = sinkline::NowTimestamp();
    std::ofstream(spool_->ContentPath(id)) << "Subject: t\r\n\r\nx\r\n";
    EXPECT_TRUE(spool_->WriteEnvelope(e).ok());
    messages_.Track(id, v1::MESSAGE_STATE_RELEASING, e.envelope(), 10, "test");
    return e;
  }

  // Waits (bounded) until the message reaches `state`.
  bool WaitFor(const std::string& id, v1::MessageState state) {
    for (int i = 0; i < 500; ++i) {
      if (messages_.State(id) == state) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  std::chrono::milliseconds max_age_{3600 * 1000};
  fs::path dir_;
  boost::asio::thread_pool pool_{1};
  FakeBackend backend_;
  MessageTable messages_;
  LeaseTable leases_{pool_};
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<Submitter> submitter_;
};

TEST_F(SubmissionTest, TakenMessagesLeaveTheSpool) {
  submitter_->Submit(Commit("Q1"));
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_SUBMITTED));
  EXPECT_EQ(backend_.Paths().at(0), spool_->ContentPath("Q1"));
  EXPECT_FALSE(fs::exists(spool_->ContentPath("Q1")));
  EXPECT_FALSE(spool_->ReadEnvelope("Q1").ok());
}

TEST_F(SubmissionTest, DeferredIsRetriedWithOnlyTheDeferredRecipients) {
  SubmitOutcome partial;
  partial.deferred = {Rcpt("r1@example.test")};
  partial.deferred_reason = "451 4.2.0 busy";
  backend_.Script(absl::UnavailableError("connection refused"));
  backend_.Script(partial);
  submitter_->Submit(Commit("Q1", 2));
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_SUBMITTED));
  const auto seen = backend_.Seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].envelope().recipients_size(), 2);
  EXPECT_EQ(seen[1].envelope().recipients_size(), 2);
  ASSERT_EQ(seen[2].envelope().recipients_size(), 1);
  EXPECT_EQ(seen[2].envelope().recipients(0).address(), "r1@example.test");
  auto info = messages_.Get("Q1");
  ASSERT_TRUE(info.has_value());
  bool saw_retry = false;
  for (const auto& h : info->history()) {
    saw_retry |= h.what().find("deferred, retry in") != std::string::npos;
  }
  EXPECT_TRUE(saw_retry);
}

TEST_F(SubmissionTest, RefusedForGoodMovesToFailedAndCanBeReleased) {
  backend_.Script(absl::FailedPreconditionError("554 5.7.1 relay denied"));
  submitter_->Submit(Commit("Q1"));
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_FAILED));
  auto failed = spool_->ListFailed();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].reason, "554 5.7.1 relay denied");
  // The content stays for an operator; the message is no longer committed.
  EXPECT_TRUE(fs::exists(spool_->ContentPath("Q1")));
  EXPECT_TRUE(spool_->ListCommitted().empty());

  ASSERT_TRUE(submitter_->Release("Q1").ok());
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_SUBMITTED));
  int q1 = 0;  // the DSN to the sender is submitted too (dsn.h)
  for (const auto& e : backend_.Seen()) q1 += e.queue_id() == "Q1" ? 1 : 0;
  EXPECT_EQ(q1, 2);
  EXPECT_TRUE(spool_->ListFailed().empty());
}

TEST_F(SubmissionTest, RefusedForGoodSendsTheSenderADsnButNotTheNullSender) {
  backend_.Script(absl::FailedPreconditionError("554 5.7.1 relay denied"));
  backend_.Script(absl::FailedPreconditionError("554 5.7.1 relay denied"));
  v1::QueueEntry null_sender = Commit("Q2");
  null_sender.mutable_envelope()->set_mail_from("");
  ASSERT_TRUE(spool_->WriteEnvelope(null_sender).ok());
  submitter_->Submit(null_sender);
  ASSERT_TRUE(WaitFor("Q2", v1::MESSAGE_STATE_FAILED));
  submitter_->Submit(Commit("Q1"));
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_FAILED));
  std::vector<v1::QueueEntry> dsns;
  for (int i = 0; i < 500 && dsns.empty(); ++i) {
    for (const auto& e : backend_.Seen()) {
      if (e.queue_id() != "Q1" && e.queue_id() != "Q2") dsns.push_back(e);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(dsns.size(), 1u);
  EXPECT_EQ(dsns[0].envelope().mail_from(), "");
  ASSERT_EQ(dsns[0].envelope().recipients_size(), 1);
  EXPECT_EQ(dsns[0].envelope().recipients(0).address(), "a@example.net");
  ASSERT_TRUE(WaitFor(dsns[0].queue_id(), v1::MESSAGE_STATE_SUBMITTED));
  EXPECT_FALSE(fs::exists(spool_->ContentPath(dsns[0].queue_id())));
}

TEST_F(SubmissionTest, PartlyRefusedKeepsTheRefusedRecipientsForAnOperator) {
  SubmitOutcome some;
  some.refused = {Rcpt("r0@example.test")};
  some.refusals = {"<r0@example.test>: 550 5.1.1 unknown"};
  backend_.Script(some);
  submitter_->Submit(Commit("Q1", 2));
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_FAILED));
  auto failed = spool_->ListFailed();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_NE(failed[0].reason.find("1 of 2 recipients refused"),
            std::string::npos);
  ASSERT_EQ(failed[0].entry.envelope().recipients_size(), 1);
  EXPECT_EQ(failed[0].entry.envelope().recipients(0).address(),
            "r0@example.test");
}

TEST_F(SubmissionTest, TooOldFails) {
  backend_.Script(absl::UnavailableError("down"));
  v1::QueueEntry e = Commit("Q1");
  e.mutable_committed()->set_seconds(e.committed().seconds() - 7200);
  submitter_->Submit(e);
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_FAILED));
  EXPECT_NE(spool_->ListFailed().at(0).reason.find("gave up after"),
            std::string::npos);
}

TEST_F(SubmissionTest, ReleaseOnlyTakesHeldQuarantinedOrFailed) {
  EXPECT_EQ(submitter_->Release("nope").code(), absl::StatusCode::kNotFound);
  Commit("Q1");
  messages_.SetState("Q1", v1::MESSAGE_STATE_LEASED, "busy");
  EXPECT_EQ(submitter_->Release("Q1").code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      spool_->WriteHold("Q1", v1::MESSAGE_STATE_QUARANTINED, "virus").ok());
  messages_.SetState("Q1", v1::MESSAGE_STATE_QUARANTINED, "quarantined",
                     "virus");
  ASSERT_TRUE(submitter_->Release("Q1").ok());
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_SUBMITTED));
  EXPECT_FALSE(spool_->ReadHold("Q1").has_value());
}

TEST_F(SubmissionTest, ChainOverQuarantinesWithADurableRecord) {
  v1::QueueEntry e = Commit("Q1");
  auto record = std::make_shared<MessageRecord>(
      spool_->ContentPath("Q1"),
      [](const std::vector<v1::ContentEdit>&) { return absl::OkStatus(); });
  record->set_queue_id("Q1");
  submitter_->ChainOver(std::make_shared<v1::QueueEntry>(e), record,
                        "binding scan answered 554 after COMMIT");
  ASSERT_TRUE(WaitFor("Q1", v1::MESSAGE_STATE_QUARANTINED));
  auto hold = spool_->ReadHold("Q1");
  ASSERT_TRUE(hold.has_value());
  EXPECT_EQ(hold->reason, "binding scan answered 554 after COMMIT");
  EXPECT_TRUE(backend_.Seen().empty());
}

}  // namespace
}  // namespace sinkline::broker
