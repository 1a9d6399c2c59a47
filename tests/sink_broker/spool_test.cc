// The spool's layout: records beside each committed message, failed/ moves,
// partial commits, and the gauges.
#include "sink_broker/spool.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

void Write(const fs::path& p, size_t n) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0640);
  ASSERT_GE(fd, 0) << p;
  const std::string data(n, 'x');
  ASSERT_EQ(::write(fd, data.data(), n), static_cast<ssize_t>(n));
  ::close(fd);
}

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("spool-" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    ASSERT_TRUE(spool().Prepare().ok());
  }
  void TearDown() override { fs::remove_all(dir_); }
  Spool spool() const { return Spool(dir_.string()); }

  // A committed message as COMMIT leaves it.
  v1::QueueEntry Commit(const std::string& id) {
    v1::QueueEntry e;
    e.set_queue_id(id);
    e.mutable_envelope()->set_mail_from("a@example.net");
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    Write(spool().ContentPath(id), 10);
    EXPECT_TRUE(spool().WriteEnvelope(e).ok());
    return e;
  }

  fs::path dir_;
};

TEST_F(SpoolTest, FinishedBindingsAndHoldsAreKeptBesideTheMessage) {
  Commit("Q1");
  EXPECT_TRUE(spool().Finished("Q1").empty());
  spool().MarkFinished("Q1", "archive");
  spool().MarkFinished("Q1", "stamp");
  EXPECT_EQ(spool().Finished("Q1"),
            (std::set<std::string>{"archive", "stamp"}));
  EXPECT_FALSE(spool().ReadHold("Q1").has_value());
  ASSERT_TRUE(spool()
                  .WriteHold("Q1", v1::MESSAGE_STATE_QUARANTINED, "virus found")
                  .ok());
  auto hold = spool().ReadHold("Q1");
  ASSERT_TRUE(hold.has_value());
  EXPECT_EQ(hold->state, v1::MESSAGE_STATE_QUARANTINED);
  EXPECT_EQ(hold->reason, "virus found");
  spool().RemoveHold("Q1");
  EXPECT_FALSE(spool().ReadHold("Q1").has_value());
  spool().RemoveCommitted("Q1");
  EXPECT_TRUE(spool().ListCommitted().empty());
  EXPECT_FALSE(fs::exists(dir_ / "committed" / "Q1.done"));
}

TEST_F(SpoolTest, FailedMessagesMoveOutAndBack) {
  Commit("Q1");
  ASSERT_TRUE(spool().MoveToFailed("Q1", "550 no such user").ok());
  EXPECT_TRUE(spool().ListCommitted().empty());
  auto failed = spool().ListFailed();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].entry.queue_id(), "Q1");
  EXPECT_EQ(failed[0].reason, "550 no such user");
  ASSERT_TRUE(spool().RestoreFailed("Q1").ok());
  EXPECT_TRUE(spool().ListFailed().empty());
  auto env = spool().ReadEnvelope("Q1");
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->envelope().recipients(0).address(), "b@example.test");
  EXPECT_FALSE(spool().RestoreFailed("Q2").ok());
}

TEST_F(SpoolTest, PartialCommitsGoAndCommittedMessagesStay) {
  Commit("Q1");
  Write(dir_ / "committed" / "Q2.msg", 5);  // COMMIT cut before its record
  Write(dir_ / "committed" / "Q1.msg.edit", 5);
  Write(dir_ / "committed" / ".Q1.env.12-0.tmp", 5);
  EXPECT_EQ(spool().RemovePartialCommits(), 3);
  EXPECT_TRUE(fs::exists(spool().ContentPath("Q1")));
  EXPECT_TRUE(fs::exists(spool().EnvelopePath("Q1")));
  EXPECT_FALSE(fs::exists(dir_ / "committed" / "Q2.msg"));
  ASSERT_EQ(spool().ListCommitted().size(), 1u);
}

TEST_F(SpoolTest, UnreadableRecordsAreSkipped) {
  Commit("Q1");
  {
    int fd = ::open(spool().EnvelopePath("Q2").c_str(),
                    O_WRONLY | O_CREAT | O_TRUNC, 0640);
    ASSERT_EQ(::write(fd, "\xff\xff\xff", 3), 3);
    ::close(fd);
  }
  auto listed = spool().ListCommitted();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].queue_id(), "Q1");
  EXPECT_FALSE(spool().ReadEnvelope("Q2").ok());
}

TEST_F(SpoolTest, GaugesCountBytesAndMessagesPerDirectory) {
  Write(dir_ / "incoming" / "s1-t1", 100);
  Write(dir_ / "committed" / "Q1.msg", 1000);
  Write(dir_ / "committed" / "Q1.env", 50);
  Write(dir_ / "committed" / "Q2.msg", 2000);
  Write(dir_ / "committed" / "Q2.env", 50);
  auto bytes = spool().UpdateGauges();
  EXPECT_EQ(bytes["incoming"], 100u);
  EXPECT_EQ(bytes["committed"], 3100u);
  EXPECT_EQ(bytes["failed"], 0u);
  auto values = MetricsRegistry::Default().Values();
  auto value = [&](const std::string& key) {
    for (const auto& [k, v] : values) {
      if (k == key) return v;
    }
    return -1.0;
  };
  EXPECT_EQ(value("sinkline_broker_spool_messages{dir=\"committed\"}"), 2);
  EXPECT_EQ(value("sinkline_broker_spool_messages{dir=\"incoming\"}"), 1);
  EXPECT_EQ(value("sinkline_broker_spool_bytes{dir=\"committed\"}"), 3100);
}

}  // namespace
}  // namespace sinkline::broker
