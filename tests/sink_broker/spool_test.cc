// The spool's layout: content files, records in the store, failed
// messages, partial commits, the import of the old layout, and the gauges.
#include "sink_broker/spool.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "sinkline/common/durable_file.h"
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
  EXPECT_TRUE(spool().Finished("Q1").empty());
  EXPECT_FALSE(fs::exists(spool().ContentPath("Q1")));
  // No record is a file of its own.
  EXPECT_TRUE(fs::is_empty(dir_ / "committed"));
}

TEST_F(SpoolTest, RecordsSurviveAReopenAndStateChangesCountWrites) {
  auto& m = MetricsRegistry::Default();
  Counter& synced = m.GetCounter("sinkline_broker_store_writes_total", "",
                                 {{"sync", "true"}});
  const double before = synced.Value();
  {
    Spool s(dir_.string());
    Commit("Q1");
    s.MarkFinished("Q1", "archive");
    ASSERT_TRUE(s.WriteDeliveryState("Q1", "deferred\tb\t451\t\n").ok());
  }
  // Every Spool object above is gone: the store was closed and is opened
  // again here.
  EXPECT_EQ(synced.Value() - before, 3);
  EXPECT_GT(m.GetCounter("sinkline_broker_store_syncs_total", "").Value(), 0);
  EXPECT_EQ(spool().Finished("Q1"), (std::set<std::string>{"archive"}));
  EXPECT_EQ(spool().ReadDeliveryState("Q1"), "deferred\tb\t451\t\n");
  ASSERT_EQ(spool().ListCommitted().size(), 1u);
  spool().RemoveCommitted("Q1");
  EXPECT_FALSE(spool().ReadDeliveryState("Q1").has_value());
}

TEST_F(SpoolTest, ImportsASpoolInTheOldLayout) {
  fs::remove_all(dir_);
  const fs::path committed = dir_ / "committed";
  const fs::path failed = dir_ / "failed";
  fs::create_directories(committed);
  fs::create_directories(failed);
  auto entry = [](const std::string& id) {
    v1::QueueEntry e;
    e.set_queue_id(id);
    e.mutable_envelope()->set_mail_from("a@example.net");
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    std::string bytes;
    e.SerializeToString(&bytes);
    return bytes;
  };
  auto put = [](const fs::path& p, const std::string& data) {
    std::ofstream(p, std::ios::binary) << data;
  };
  // As the broker before the store left it: a message with finished
  // bindings and a deferral, a quarantined one, a failed one, and a partial
  // commit.
  put(committed / "QOLD.msg", "Subject: old\r\n\r\nx\r\n");
  put(committed / "QOLD.env", entry("QOLD"));
  put(committed / "QOLD.done", "archive\nstamp\n");
  put(committed / "QOLD.rcpt", "deferred\tb@example.test\t451 busy\t\n");
  put(committed / "QHELD.msg", "Subject: held\r\n\r\nx\r\n");
  put(committed / "QHELD.env", entry("QHELD"));
  put(committed / "QHELD.hold", "quarantined\nvirus found\n");
  put(failed / "QFAIL.msg", "Subject: failed\r\n\r\nx\r\n");
  put(failed / "QFAIL.env", entry("QFAIL"));
  put(failed / "QFAIL.reason", "550 no such user\n");
  put(committed / "QHALF.msg", "never acknowledged");

  ASSERT_TRUE(spool().Prepare().ok());
  EXPECT_EQ(spool().RemovePartialCommits(), 1);  // QHALF.msg
  std::set<std::string> ids;
  for (const auto& e : spool().ListCommitted()) ids.insert(e.queue_id());
  EXPECT_EQ(ids, (std::set<std::string>{"QOLD", "QHELD"}));
  EXPECT_EQ(spool().Finished("QOLD"),
            (std::set<std::string>{"archive", "stamp"}));
  EXPECT_EQ(spool().ReadDeliveryState("QOLD"),
            "deferred\tb@example.test\t451 busy\t\n");
  auto hold = spool().ReadHold("QHELD");
  ASSERT_TRUE(hold.has_value());
  EXPECT_EQ(hold->state, v1::MESSAGE_STATE_QUARANTINED);
  EXPECT_EQ(hold->reason, "virus found");
  auto failed_list = spool().ListFailed();
  ASSERT_EQ(failed_list.size(), 1u);
  EXPECT_EQ(failed_list[0].entry.queue_id(), "QFAIL");
  EXPECT_EQ(failed_list[0].reason, "550 no such user");
  EXPECT_EQ(ReadWholeFile(spool().ContentPath("QFAIL")),
            "Subject: failed\r\n\r\nx\r\n");
  // Only content is left as files; the old records and failed/ are gone.
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(committed)) {
    files.insert(e.path().filename().string());
  }
  EXPECT_EQ(files,
            (std::set<std::string>{"QOLD.msg", "QHELD.msg", "QFAIL.msg"}));
  EXPECT_FALSE(fs::exists(failed));
  // A second start finds nothing more to import.
  ASSERT_TRUE(spool().Prepare().ok());
  EXPECT_EQ(spool().ListCommitted().size(), 2u);
}

TEST_F(SpoolTest, FailedMessagesMoveOutAndBack) {
  Commit("Q1");
  ASSERT_TRUE(spool().MoveToFailed("Q1", "550 no such user").ok());
  EXPECT_TRUE(spool().ListCommitted().empty());
  auto failed = spool().ListFailed();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].entry.queue_id(), "Q1");
  EXPECT_EQ(failed[0].reason, "550 no such user");
  EXPECT_TRUE(fs::exists(spool().ContentPath("Q1")));
  ASSERT_TRUE(spool().RestoreFailed("Q1").ok());
  EXPECT_TRUE(spool().ListFailed().empty());
  EXPECT_EQ(spool().ListCommitted().size(), 1u);
  auto env = spool().ReadEnvelope("Q1");
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->envelope().recipients(0).address(), "b@example.test");
  EXPECT_FALSE(spool().RestoreFailed("Q2").ok());
}

TEST_F(SpoolTest, PartialCommitsGoAndCommittedMessagesStay) {
  Commit("Q1");
  Write(dir_ / "committed" / "Q2.msg", 5);  // COMMIT cut before its record
  Write(dir_ / "committed" / "Q1.msg.edit", 5);
  Write(dir_ / "committed" / ".Q1.msg.12-0.tmp", 5);
  // Records whose content went (submitted, the removal not yet durable).
  Commit("Q3");
  fs::remove(spool().ContentPath("Q3"));
  EXPECT_EQ(spool().RemovePartialCommits(), 4);
  EXPECT_TRUE(fs::exists(spool().ContentPath("Q1")));
  EXPECT_TRUE(spool().ReadEnvelope("Q1").ok());
  EXPECT_FALSE(spool().ReadEnvelope("Q3").ok());
  EXPECT_FALSE(fs::exists(dir_ / "committed" / "Q2.msg"));
  ASSERT_EQ(spool().ListCommitted().size(), 1u);
}

TEST_F(SpoolTest, GaugesCountBytesAndMessagesPerDirectory) {
  Write(dir_ / "incoming" / "s1-t1", 100);
  Commit("Q1");
  Write(dir_ / "committed" / "Q1.msg", 1000);
  Commit("Q2");
  Write(dir_ / "committed" / "Q2.msg", 2000);
  Commit("Q3");
  Write(dir_ / "committed" / "Q3.msg", 300);
  ASSERT_TRUE(spool().MoveToFailed("Q3", "550 no").ok());
  auto bytes = spool().UpdateGauges();
  EXPECT_EQ(bytes["incoming"], 100u);
  EXPECT_EQ(bytes["committed"], 3000u);
  EXPECT_EQ(bytes["failed"], 300u);
  EXPECT_GT(bytes["state"], 0u);
  auto values = MetricsRegistry::Default().Values();
  auto value = [&](const std::string& key) {
    for (const auto& [k, v] : values) {
      if (k == key) return v;
    }
    return -1.0;
  };
  EXPECT_EQ(value("sinkline_broker_spool_messages{dir=\"committed\"}"), 2);
  EXPECT_EQ(value("sinkline_broker_spool_messages{dir=\"incoming\"}"), 1);
  EXPECT_EQ(value("sinkline_broker_spool_messages{dir=\"failed\"}"), 1);
  EXPECT_EQ(value("sinkline_broker_spool_bytes{dir=\"committed\"}"), 3000);
}

}  // namespace
}  // namespace sinkline::broker
