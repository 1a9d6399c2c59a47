#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "sink_broker/lease.h"

namespace sinkline::broker {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/header_index_" + name;
}

void WriteFile(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp, std::ios::binary) << data;
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0);
}

TEST(HeaderIndexTest, ParsedOncePerVersionAndSharedByReaders) {
  const std::string path = TempPath("shared");
  WriteFile(path, "Subject: one\r\nX-Folded: a\r\n\tb\r\n\r\nbody line\r\n");
  MessageRecord record(path, nullptr);
  auto fd1 = record.OpenSnapshot();
  auto fd2 = record.OpenSnapshot();
  ASSERT_TRUE(fd1.ok() && fd2.ok());
  auto a = record.HeaderIndex(**fd1);
  auto b = record.HeaderIndex(**fd2);  // another lease, same version
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(record.header_index_builds(), 1);
  ASSERT_EQ((*a)->fields.size(), 2u);
  EXPECT_EQ((*a)->fields[1].raw, "X-Folded: a\r\n\tb\r\n");
  EXPECT_EQ((*a)->body_offset, 33u);  // after the empty line

  // An edit publishes a new file: a new version gets its own index, and a
  // reader still on the old snapshot keeps seeing the old one.
  WriteFile(path, "Subject: two\r\n\r\nbody\r\n");
  record.ContentChanged();  // as a publication does
  auto fd3 = record.OpenSnapshot();
  ASSERT_TRUE(fd3.ok());
  auto c = record.HeaderIndex(**fd3);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(record.header_index_builds(), 2);
  ASSERT_EQ((*c)->fields.size(), 1u);
  EXPECT_EQ((*c)->fields[0].raw, "Subject: two\r\n");
  EXPECT_EQ((*c)->body_offset, 16u);
  auto old = record.HeaderIndex(**fd1);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ((*old)->fields.size(), 2u);
}

TEST(HeaderIndexTest, BoundedRead) {
  const std::string path = TempPath("bounded");
  WriteFile(path, "A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\n");
  MessageRecord record(path, nullptr);
  auto fd = record.OpenSnapshot();
  ASSERT_TRUE(fd.ok());
  auto index = record.HeaderIndex(**fd, 12);  // only "A: 1" and "B: 2"
  ASSERT_TRUE(index.ok());
  EXPECT_EQ((*index)->fields.size(), 2u);
}

// A new version that lands on the same inode with the same size (inode
// reuse after delete + create, or a rewrite in place) is a new version:
// its index is its own, never the old one's.
TEST(HeaderIndexTest, SameInodeAndSizeIsStillANewVersion) {
  const std::string path = TempPath("reused");
  std::ofstream(path, std::ios::binary) << "Subject: one\r\n\r\nbody\r\n";
  MessageRecord record(path, nullptr);
  {
    auto fd1 = record.OpenSnapshot();
    ASSERT_TRUE(fd1.ok());
    auto first = record.HeaderIndex(**fd1);
    ASSERT_TRUE(first.ok());
  }  // the old version's snapshot closed: its inode may come back
  // The same inode, the same size, other bytes, published as the next
  // version.
  {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f << "Subject: two\r\n\r\nbody\r\n";
  }
  record.ContentChanged();
  auto fd2 = record.OpenSnapshot();
  ASSERT_TRUE(fd2.ok());
  auto second = record.HeaderIndex(**fd2);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ((*second)->fields.size(), 1u);
  EXPECT_EQ((*second)->fields[0].raw, "Subject: two\r\n");
  EXPECT_EQ(record.header_index_builds(), 2);
}

}  // namespace
}  // namespace sinkline::broker
