#include <gtest/gtest.h>

#include "sinkline/sdk/sink.h"

namespace sinkline::sdk {
namespace {

// A sink that exercises every helper, one per event.
class Everything : public Sink {
 public:
  void OnConnect(EventContext& ctx) override { ctx.DropSession("go away"); }
  void OnRcpt(EventContext& ctx) override {
    if (ctx.recipient() == "nobody@example.test") {
      ctx.Reject(550, "5.1.1", "no such user");
    }
  }
  void OnMail(EventContext& ctx) override {
    ctx.ContinueWithReply(250, "2.1.0", "sender fine");
    ctx.SetSender("bounces@example.test");
  }
  void OnEod(EventContext& ctx) override {
    ctx.AppendHeader("X-Last", "1");
    ctx.ChangeHeader("Subject", 2, "new");
    ctx.DeleteHeader("X-Old");
    ctx.ReplaceBody("body\r\n");
    ctx.AddRecipient("archive@example.test");
    ctx.RemoveRecipient("bob@example.test");
    ctx.HoldLease();
  }
  void OnOther(EventContext& ctx) override {
    ctx.Consume(250, "2.0.0", "status: fine");
  }
};

v1::Verdict Dispatch(Sink& sink, v1::EventType type,
                     const std::string& rcpt = "") {
  v1::SinkRequest req;
  req.mutable_event()->set_type(type);
  req.mutable_event()->mutable_recipient()->set_address(rcpt);
  EventContext ctx(req);
  sink.Handle(ctx);
  return ctx.verdict();
}

TEST(Sdk, DefaultIsContinueWithoutReply) {
  Sink plain;
  auto v = Dispatch(plain, v1::EVENT_TYPE_EOD);
  EXPECT_EQ(v.action(), v1::ACTION_CONTINUE);
  EXPECT_FALSE(v.has_reply());
  EXPECT_EQ(v.content_edits_size(), 0);
}

TEST(Sdk, DropSessionIs421AndCloses) {
  Everything s;
  auto v = Dispatch(s, v1::EVENT_TYPE_CONNECT);
  EXPECT_EQ(v.action(), v1::ACTION_CONSUME);
  EXPECT_TRUE(v.drop_session());
  EXPECT_EQ(v.reply().code(), 421u);
  EXPECT_EQ(v.reply().enhanced_code(), "4.7.0");
}

TEST(Sdk, RejectOneRecipient) {
  Everything s;
  auto v = Dispatch(s, v1::EVENT_TYPE_RCPT, "nobody@example.test");
  EXPECT_EQ(v.action(), v1::ACTION_CONSUME);
  EXPECT_EQ(v.reply().code(), 550u);
  EXPECT_EQ(v.reply().enhanced_code(), "5.1.1");
  EXPECT_EQ(v.reply().lines(0), "no such user");
  EXPECT_EQ(Dispatch(s, v1::EVENT_TYPE_RCPT, "bob@example.test").action(),
            v1::ACTION_CONTINUE);
}

TEST(Sdk, ContinueWithReplyAndEnvelopeEdit) {
  Everything s;
  auto v = Dispatch(s, v1::EVENT_TYPE_MAIL);
  EXPECT_EQ(v.action(), v1::ACTION_CONTINUE);
  EXPECT_EQ(v.reply().lines(0), "sender fine");
  ASSERT_EQ(v.envelope_edits_size(), 1);
  EXPECT_EQ(v.envelope_edits(0).set_sender(), "bounces@example.test");
}

TEST(Sdk, ContentAndEnvelopeEditsAndHold) {
  Everything s;
  auto v = Dispatch(s, v1::EVENT_TYPE_EOD);
  ASSERT_EQ(v.content_edits_size(), 4);
  EXPECT_TRUE(v.content_edits(0).add_header().position().append());
  EXPECT_EQ(v.content_edits(1).change_header().occurrence(), 2u);
  EXPECT_EQ(v.content_edits(2).delete_header().name(), "X-Old");
  EXPECT_EQ(v.content_edits(3).replace_body().body(), "body\r\n");
  ASSERT_EQ(v.envelope_edits_size(), 2);
  EXPECT_EQ(v.envelope_edits(0).add_recipient().address(),
            "archive@example.test");
  EXPECT_EQ(v.envelope_edits(1).remove_recipient(), "bob@example.test");
  EXPECT_TRUE(v.hold_lease());
}

TEST(Sdk, CustomVerbGoesToOnOther) {
  Everything s;
  auto v = Dispatch(s, v1::EVENT_TYPE_UNKNOWN);
  EXPECT_EQ(v.action(), v1::ACTION_CONSUME);
  EXPECT_EQ(v.reply().lines(0), "status: fine");
}

}  // namespace
}  // namespace sinkline::sdk
