// The connection's one writer: bytes queued while a write is under way wait
// for it, and the watchdog's last reply goes after them with nothing after.
#include "smtp_edge/output_queue.h"

#include <gtest/gtest.h>

namespace sinkline::edge {
namespace {

TEST(OutputQueue, OneWriteAtATimeInOrder) {
  OutputQueue q;
  EXPECT_EQ(q.Take(), "");
  EXPECT_FALSE(q.writing());
  q.Append("250 a\r\n");
  q.Append("250 b\r\n");
  EXPECT_EQ(q.Take(), "250 a\r\n250 b\r\n");
  EXPECT_TRUE(q.writing());
  // A second writer finds the write under way and writes nothing.
  q.Append("250 c\r\n");
  EXPECT_EQ(q.Take(), "");
  EXPECT_FALSE(q.empty());
  q.Done();
  EXPECT_EQ(q.Take(), "250 c\r\n");
  q.Done();
  EXPECT_EQ(q.Take(), "");
  EXPECT_TRUE(q.empty());
}

TEST(OutputQueue, TheLastReplyWaitsForTheWriteUnderWay) {
  OutputQueue q;
  q.Append(std::string(100000, 'x'));
  const std::string first = q.Take();
  ASSERT_EQ(first.size(), 100000u);
  // The watchdog fires while the big write is pending.
  q.AppendLast("421 4.4.2 mx Error: timeout exceeded\r\n");
  EXPECT_TRUE(q.sealed());
  EXPECT_EQ(q.Take(), "");  // not beside the write under way
  // The session answers a command read meanwhile: dropped.
  q.Append("250 2.0.0 Ok\r\n");
  q.Done();
  EXPECT_EQ(q.Take(), "421 4.4.2 mx Error: timeout exceeded\r\n");
  q.Done();
  q.Append("250 2.0.0 Ok\r\n");
  EXPECT_EQ(q.Take(), "");
}

}  // namespace
}  // namespace sinkline::edge
