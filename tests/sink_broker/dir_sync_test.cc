#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "sinkline/common/metrics.h"
#include "spool.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

TEST(DirectorySyncTest, ConcurrentCallersShareFsyncs) {
  const fs::path dir = fs::path(::testing::TempDir()) / "dir_sync_shared";
  fs::create_directories(dir);
  const auto before = DirectorySyncCounts();
  constexpr int kThreads = 16;
  constexpr int kRounds = 20;
  std::atomic<int> failures{0};
  // The first fsync waits until every thread has asked for one (bounded),
  // so the others queue behind it and must share the next.
  std::atomic<bool> first{true};
  SetDirectorySyncHookForTesting([&] {
    if (!first.exchange(false)) return;
    for (int i = 0; i < 2000; ++i) {
      if (DirectorySyncCounts().requested - before.requested >= kThreads) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        // A rename into the directory, then a sync that must cover it.
        const fs::path tmp = dir / ("t" + std::to_string(t) + ".tmp");
        const fs::path dst =
            dir / ("t" + std::to_string(t) + "-" + std::to_string(i));
        int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0640);
        ::close(fd);
        std::error_code ec;
        fs::rename(tmp, dst, ec);
        if (ec || !SyncDirectory(dir.string()).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  SetDirectorySyncHookForTesting(nullptr);
  EXPECT_EQ(failures, 0);
  const auto after = DirectorySyncCounts();
  EXPECT_EQ(after.requested - before.requested,
            static_cast<uint64_t>(kThreads * kRounds));
  // Every request was served by a sync that started after it, and
  // concurrent requests shared: fewer syncs ran than were asked for.
  EXPECT_GE(after.run - before.run, 1u);
  EXPECT_LT(after.run - before.run, after.requested - before.requested);
}

TEST(DirectorySyncTest, AloneEachCallRunsItsOwn) {
  const fs::path dir = fs::path(::testing::TempDir()) / "dir_sync_alone";
  fs::create_directories(dir);
  const auto before = DirectorySyncCounts();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(SyncDirectory(dir.string()).ok());
  const auto after = DirectorySyncCounts();
  EXPECT_EQ(after.requested - before.requested, 3u);
  EXPECT_EQ(after.run - before.run, 3u);
}

TEST(DirectorySyncTest, MissingDirectoryIsAnError) {
  EXPECT_FALSE(SyncDirectory(::testing::TempDir() + "/no/such/dir").ok());
}

}  // namespace
}  // namespace sinkline::broker

namespace sinkline::broker {
namespace {

TEST(SpoolGaugesTest, BytesAndMessagesPerDirectory) {
  namespace fs = std::filesystem;
  const fs::path spool = fs::path(::testing::TempDir()) / "spool_gauges";
  fs::remove_all(spool);
  ASSERT_TRUE(PrepareSpool(spool.string()).ok());
  auto write = [](const fs::path& p, size_t n) {
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0640);
    const std::string data(n, 'x');
    ASSERT_EQ(::write(fd, data.data(), n), static_cast<ssize_t>(n));
    ::close(fd);
  };
  write(spool / "incoming" / "s1-t1", 100);
  write(spool / "committed" / "Q1.msg", 1000);
  write(spool / "committed" / "Q1.env", 50);
  write(spool / "committed" / "Q2.msg", 2000);
  write(spool / "committed" / "Q2.env", 50);
  auto bytes = UpdateSpoolGauges(spool.string());
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
