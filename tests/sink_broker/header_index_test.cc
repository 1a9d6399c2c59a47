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
  const int fd1 = ::open(path.c_str(), O_RDONLY);
  const int fd2 = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd1, 0);
  auto a = record.HeaderIndex(fd1);
  auto b = record.HeaderIndex(fd2);  // another lease, same version
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(record.header_index_builds(), 1);
  ASSERT_EQ((*a)->fields.size(), 2u);
  EXPECT_EQ((*a)->fields[1].raw, "X-Folded: a\r\n\tb\r\n");
  EXPECT_EQ((*a)->body_offset, 33u);  // after the empty line

  // An edit publishes a new file: a new version gets its own index, and a
  // reader still on the old snapshot keeps seeing the old one.
  WriteFile(path, "Subject: two\r\n\r\nbody\r\n");
  const int fd3 = ::open(path.c_str(), O_RDONLY);
  auto c = record.HeaderIndex(fd3);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(record.header_index_builds(), 2);
  ASSERT_EQ((*c)->fields.size(), 1u);
  EXPECT_EQ((*c)->fields[0].raw, "Subject: two\r\n");
  EXPECT_EQ((*c)->body_offset, 16u);
  auto old = record.HeaderIndex(fd1);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ((*old)->fields.size(), 2u);
  ::close(fd1);
  ::close(fd2);
  ::close(fd3);
}

TEST(HeaderIndexTest, BoundedRead) {
  const std::string path = TempPath("bounded");
  WriteFile(path, "A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\n");
  MessageRecord record(path, nullptr);
  const int fd = ::open(path.c_str(), O_RDONLY);
  auto index = record.HeaderIndex(fd, 12);  // only "A: 1" and "B: 2"
  ASSERT_TRUE(index.ok());
  EXPECT_EQ((*index)->fields.size(), 2u);
  ::close(fd);
}

}  // namespace
}  // namespace sinkline::broker
