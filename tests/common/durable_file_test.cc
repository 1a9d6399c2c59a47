#include "sinkline/common/durable_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "sinkline/common/metrics.h"

namespace sinkline {
namespace {

namespace fs = std::filesystem;

TEST(ErrnoStatusTest, AFullDiskIsResourceExhausted) {
  EXPECT_EQ(ErrnoStatus("write", ENOSPC).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus("write", EDQUOT).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus("open", EMFILE).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus("open", EACCES).code(), absl::StatusCode::kUnavailable);
}

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

TEST(WriteFileDurablyTest, ReplacesWholeAndLeavesNoTemporary) {
  const fs::path dir = fs::path(::testing::TempDir()) / "durable_write";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "record").string();
  ASSERT_TRUE(WriteFileDurably(path, "first").ok());
  ASSERT_TRUE(WriteFileDurably(path, "second, longer").ok());
  ASSERT_TRUE(WriteFileDurably(path, "x", /*sync=*/false).ok());
  std::ifstream in(path);
  std::string got((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(got, "x");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST(WriteFileDurablyTest, MissingDirectoryIsAnError) {
  EXPECT_FALSE(
      WriteFileDurably(::testing::TempDir() + "/no/such/dir/f", "x").ok());
}

}  // namespace
}  // namespace sinkline
