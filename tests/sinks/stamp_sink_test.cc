#include "stamp_sink.h"

#include <gtest/gtest.h>

namespace sinkline::sinks {
namespace {

using sinkline::v1::ACTION_CONTINUE;
using sinkline::v1::CONTENT_ACCESS_READ;
using sinkline::v1::CONTENT_ACCESS_READ_WRITE;
using sinkline::v1::SinkRequest;

TEST(StampVerdict, AddsHeaderAtTopWithQueueId) {
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ_WRITE);
  req.mutable_event()->set_queue_id("Q123");
  req.mutable_event()->set_transaction_id("T1");
  auto v = StampVerdict("stamp", "X-Sinkline-Stamp", req);
  EXPECT_EQ(v.action(), ACTION_CONTINUE);
  ASSERT_EQ(v.content_edits_size(), 1);
  const auto& add = v.content_edits(0).add_header();
  EXPECT_EQ(add.name(), "X-Sinkline-Stamp");
  EXPECT_EQ(add.value(), "stamp; Q123");
  EXPECT_EQ(add.position().index(), 0u);
}

TEST(StampVerdict, FallsBackToTransactionIdBeforeCommit) {
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ_WRITE);
  req.mutable_event()->set_transaction_id("T1");
  auto v = StampVerdict("s2", "X-Trace", req);
  ASSERT_EQ(v.content_edits_size(), 1);
  EXPECT_EQ(v.content_edits(0).add_header().value(), "s2; T1");
}

TEST(StampVerdict, NoEditWithoutWriteAccess) {
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ);
  req.mutable_event()->set_queue_id("Q123");
  auto v = StampVerdict("stamp", "X-Sinkline-Stamp", req);
  EXPECT_EQ(v.action(), ACTION_CONTINUE);
  EXPECT_EQ(v.content_edits_size(), 0);
}

}  // namespace
}  // namespace sinkline::sinks
