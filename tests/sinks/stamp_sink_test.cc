#include "sinks/stamp/stamp_sink.h"

#include <gtest/gtest.h>

namespace sinkline::sinks {
namespace {

using sinkline::v1::ACTION_CONTINUE;
using sinkline::v1::CONTENT_ACCESS_READ;
using sinkline::v1::CONTENT_ACCESS_READ_WRITE;
using sinkline::v1::SinkRequest;

sinkline::v1::Verdict Dispatch(StampSink& sink, const SinkRequest& req) {
  sdk::EventContext ctx(req);
  sink.Handle(ctx);
  return ctx.verdict();
}

TEST(StampSink, AddsHeaderAtTopWithQueueId) {
  StampSink sink("stamp", "X-Sinkline-Stamp");
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ_WRITE);
  req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_EOD);
  req.mutable_event()->set_queue_id("Q123");
  req.mutable_event()->set_transaction_id("T1");
  auto v = Dispatch(sink, req);
  EXPECT_EQ(v.action(), ACTION_CONTINUE);
  ASSERT_EQ(v.content_edits_size(), 1);
  const auto& add = v.content_edits(0).add_header();
  EXPECT_EQ(add.name(), "X-Sinkline-Stamp");
  EXPECT_EQ(add.value(), "stamp; Q123");
  EXPECT_EQ(add.position().index(), 0u);
  EXPECT_FALSE(v.has_reply());
}

TEST(StampSink, FallsBackToTransactionIdBeforeCommit) {
  StampSink sink("s2", "X-Trace");
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ_WRITE);
  req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_EOD);
  req.mutable_event()->set_transaction_id("T1");
  auto v = Dispatch(sink, req);
  ASSERT_EQ(v.content_edits_size(), 1);
  EXPECT_EQ(v.content_edits(0).add_header().value(), "s2; T1");
}

TEST(StampSink, NoEditWithoutWriteAccess) {
  StampSink sink("stamp", "X-Sinkline-Stamp");
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ);
  req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_EOD);
  req.mutable_event()->set_queue_id("Q123");
  auto v = Dispatch(sink, req);
  EXPECT_EQ(v.action(), ACTION_CONTINUE);
  EXPECT_EQ(v.content_edits_size(), 0);
}

TEST(StampSink, AppendsAfterTheLastField) {
  StampSink sink("t1", "X-Trace", /*append=*/true);
  SinkRequest req;
  req.mutable_lease()->set_access(CONTENT_ACCESS_READ_WRITE);
  req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_EOD);
  req.mutable_event()->set_queue_id("Q9");
  auto v = Dispatch(sink, req);
  ASSERT_EQ(v.content_edits_size(), 1);
  EXPECT_TRUE(v.content_edits(0).add_header().position().append());
  EXPECT_EQ(v.content_edits(0).add_header().value(), "t1; Q9");
}

}  // namespace
}  // namespace sinkline::sinks
