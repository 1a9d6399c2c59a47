// The broker's process-wide limits (issue 13): descriptors held for
// messages (a transaction is refused at the limit, lease snapshots are
// counted) and the spool's free space (low below the minimum, told once
// per change).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "sink_broker/descriptors.h"
#include "sink_broker/lease.h"
#include "sink_broker/spool_space.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

TEST(MessageDescriptorsTest, NewTransactionsAreRefusedAtTheLimit) {
  MessageDescriptors d;
  d.set_limit(2);
  auto a = d.TryAcquire();
  auto b = d.TryAcquire();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(d.TryAcquire(), nullptr);
  // What is already taken in is counted past the limit, never refused.
  d.Add();
  EXPECT_EQ(d.in_use(), 3);
  EXPECT_EQ(d.TryAcquire(), nullptr);
  d.Remove();
  a.reset();
  EXPECT_EQ(d.in_use(), 1);
  EXPECT_NE(d.TryAcquire(), nullptr);  // a held for the statement only
  EXPECT_EQ(d.peak(), 3);
  d.set_limit(0);  // no limit
  std::vector<MessageDescriptors::Hold> many;
  for (int i = 0; i < 10; ++i) many.push_back(d.TryAcquire());
  for (const auto& h : many) EXPECT_NE(h, nullptr);
}

TEST(MessageDescriptorsTest, TheDefaultLeavesAReserveUnderTheRlimit) {
  struct rlimit rl {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur == RLIM_INFINITY) GTEST_SKIP() << "no RLIMIT_NOFILE";
  const auto soft = static_cast<int64_t>(rl.rlim_cur);
  const int64_t limit = MessageDescriptors::DefaultLimit();
  EXPECT_LE(limit, soft - 64);
  EXPECT_LE(limit, soft - soft / 4);
  EXPECT_GE(limit, 8);
}

TEST(MessageDescriptorsTest, SnapshotsAreCounted) {
  const fs::path p = fs::path(::testing::TempDir()) / "descriptors-snapshot";
  std::ofstream(p) << "x";
  MessageDescriptors& d = MessageDescriptors::Default();
  const int64_t before = d.in_use();
  {
    SnapshotFile f(::open(p.c_str(), O_RDONLY | O_CLOEXEC), 1);
    ASSERT_GE(f.fd(), 0);
    EXPECT_EQ(d.in_use(), before + 1);
  }
  EXPECT_EQ(d.in_use(), before);
  { SnapshotFile none(-1); }
  EXPECT_EQ(d.in_use(), before);
  fs::remove(p);
}

TEST(SpoolSpaceTest, LowBelowTheMinimumAndToldOncePerChange) {
  const std::string dir = ::testing::TempDir();
  int told = 0;
  SpoolSpace huge(dir, uint64_t{1} << 62);  // more than any disk has
  huge.set_on_change([&](bool low) {
    EXPECT_TRUE(low);
    ++told;
  });
  EXPECT_TRUE(huge.Check());
  EXPECT_TRUE(huge.Check());
  EXPECT_TRUE(huge.low());
  EXPECT_EQ(told, 1);
  SpoolSpace tiny(dir, 1);
  EXPECT_FALSE(tiny.Check());
  SpoolSpace off(dir, 0);
  EXPECT_FALSE(off.Check());
}

}  // namespace
}  // namespace sinkline::broker
