#include "sink_broker/messages.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

v1::Envelope Env(const std::string& from) {
  v1::Envelope e;
  e.set_mail_from(from);
  return e;
}

TEST(MessageTable, ListsByStateOldestFirst) {
  MessageTable t;
  t.Track("A", v1::MESSAGE_STATE_LEASED, Env("a@x"), 10, "committed");
  t.Track("B", v1::MESSAGE_STATE_LEASED, Env("b@x"), 20, "committed");
  t.Track("s-1", v1::MESSAGE_STATE_RECEIVING, {}, 0, "receiving");
  t.SetState("A", v1::MESSAGE_STATE_HELD, "held: expired", "expired");
  auto leased = t.List(v1::MESSAGE_STATE_LEASED);
  ASSERT_EQ(leased.size(), 1u);
  EXPECT_EQ(leased[0].queue_id(), "B");
  auto all = t.List(v1::MESSAGE_STATE_UNSPECIFIED);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].queue_id(), "A");
  EXPECT_EQ(all[2].queue_id(), "");  // receiving: no queue id yet
  auto a = t.Get("A");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->state(), v1::MESSAGE_STATE_HELD);
  EXPECT_EQ(a->reason(), "expired");
  ASSERT_EQ(a->history_size(), 2);
  EXPECT_EQ(a->history(0).what(), "committed");
  EXPECT_EQ(a->history(1).what(), "held: expired");
  t.Forget("s-1");
  EXPECT_FALSE(t.Get("s-1").has_value());
}

TEST(MessageTable, KeepsOnlyTheLatestSubmitted) {
  MessageTable t(MessageTable::Limits{.keep_submitted = 2});
  for (const char* id : {"1", "2", "3"}) {
    t.Track(id, v1::MESSAGE_STATE_LEASED, {}, 1, "committed");
    t.SetState(id, v1::MESSAGE_STATE_SUBMITTED, "submitted");
  }
  EXPECT_FALSE(t.Get("1").has_value());
  EXPECT_TRUE(t.Get("2").has_value());
  EXPECT_TRUE(t.Get("3").has_value());
  EXPECT_EQ(t.CountByState()[v1::MESSAGE_STATE_SUBMITTED], 2u);
}

TEST(MessageTable, HistoryIsBoundedKeepingTheFirstEntry) {
  MessageTable t(MessageTable::Limits{.history_per_message = 4});
  t.Track("A", v1::MESSAGE_STATE_LEASED, {}, 1, "committed");
  for (int i = 0; i < 10; ++i) t.Note("A", "step " + std::to_string(i));
  auto a = t.Get("A");
  ASSERT_EQ(a->history_size(), 4);
  EXPECT_EQ(a->history(0).what(), "committed");
  EXPECT_EQ(a->history(3).what(), "step 9");
}

}  // namespace
}  // namespace sinkline::broker
