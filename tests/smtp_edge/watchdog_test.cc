// The watchdog's clocks with a made-up time: no socket, no timer.
#include "smtp_edge/watchdog.h"

#include <gtest/gtest.h>

namespace sinkline::edge {
namespace {

using std::chrono::seconds;
using Clock = WatchdogClocks::Clock;
using Expiry = WatchdogClocks::Expiry;

WatchdogLimits Limits() {
  WatchdogLimits l;
  l.idle_timeout = seconds(300);
  l.command_timeout = seconds(60);
  l.data_min_rate = 100;  // octets per second
  l.data_rate_grace = seconds(10);
  l.max_session = seconds(3600);
  return l;
}

const Clock::time_point t0 = Clock::time_point() + seconds(1000);

TEST(WatchdogClocks, IdleTimeoutFromTheLastActivity) {
  WatchdogClocks c(Limits(), t0);
  EXPECT_EQ(c.NextCheck(t0), t0 + seconds(300));
  EXPECT_EQ(c.Expired(t0 + seconds(299), false), Expiry::kNone);
  EXPECT_EQ(c.Expired(t0 + seconds(300), false), Expiry::kIdle);
  c.Activity(t0 + seconds(200));
  EXPECT_EQ(c.Expired(t0 + seconds(300), false), Expiry::kNone);
  EXPECT_EQ(c.NextCheck(t0 + seconds(300)), t0 + seconds(500));
  EXPECT_STREQ(WatchdogClocks::Why(Expiry::kIdle), "idle timeout");
  EXPECT_STREQ(WatchdogClocks::ReplyText(Expiry::kIdle),
               " Error: timeout exceeded");
  EXPECT_EQ(WatchdogClocks::Why(Expiry::kNone), nullptr);
}

TEST(WatchdogClocks, CommandLineMustBeWholeInTime) {
  WatchdogClocks c(Limits(), t0);
  EXPECT_EQ(c.CommandDeadline(), Clock::time_point::max());
  // The first octets of a line start the clock; more octets do not move it.
  EXPECT_TRUE(c.Progress(t0 + seconds(1), 3, false, true));
  EXPECT_FALSE(c.Progress(t0 + seconds(20), 3, false, true));
  EXPECT_EQ(c.CommandDeadline(), t0 + seconds(61));
  c.Activity(t0 + seconds(60));
  EXPECT_EQ(c.Expired(t0 + seconds(61), false), Expiry::kCommandTooSlow);
  // A whole line stops it.
  EXPECT_FALSE(c.Progress(t0 + seconds(30), 2, false, false));
  EXPECT_EQ(c.CommandDeadline(), Clock::time_point::max());
}

TEST(WatchdogClocks, ContentMustComeAtTheMinimumRate) {
  WatchdogClocks c(Limits(), t0);
  EXPECT_TRUE(c.Progress(t0, 500, true, false));
  // 500 octets at 100/s earn 5 s, less than the grace.
  EXPECT_EQ(c.ContentDeadline(), t0 + seconds(10));
  EXPECT_FALSE(c.Progress(t0 + seconds(1), 1500, true, false));
  EXPECT_EQ(c.ContentDeadline(), t0 + seconds(20));
  c.Activity(t0 + seconds(20));
  EXPECT_EQ(c.Expired(t0 + seconds(19), false), Expiry::kNone);
  EXPECT_EQ(c.Expired(t0 + seconds(20), false), Expiry::kContentTooSlow);
  // The content ended: no rate any more.
  c.Progress(t0 + seconds(20), 5, false, false);
  EXPECT_EQ(c.ContentDeadline(), Clock::time_point::max());
}

TEST(WatchdogClocks, PausedClocksStandStill) {
  WatchdogClocks c(Limits(), t0);
  c.Progress(t0, 100, true, false);
  c.Pause(t0 + seconds(5));
  EXPECT_TRUE(c.paused());
  // While paused only the session's length counts, and a passed deadline
  // is looked at again in a second.
  EXPECT_EQ(c.Expired(t0 + seconds(400), false), Expiry::kNone);
  EXPECT_EQ(c.NextCheck(t0 + seconds(400)), t0 + seconds(401));
  c.Resume(t0 + seconds(35));
  EXPECT_FALSE(c.paused());
  // The 30 s pause moved the content deadline.
  EXPECT_EQ(c.ContentDeadline(), t0 + seconds(40));
}

TEST(WatchdogClocks, PauseMovesTheCommandClock) {
  WatchdogClocks c(Limits(), t0);
  c.Progress(t0, 3, false, true);
  c.Pause(t0 + seconds(10));
  c.Resume(t0 + seconds(40));
  EXPECT_EQ(c.CommandDeadline(), t0 + seconds(90));
}

TEST(WatchdogClocks, WaitingForTheBrokerOnlyTheSessionLengthCounts) {
  WatchdogClocks c(Limits(), t0);
  EXPECT_EQ(c.Expired(t0 + seconds(1000), true), Expiry::kNone);
  EXPECT_EQ(c.Expired(t0 + seconds(3600), true), Expiry::kSessionTooLong);
  EXPECT_EQ(c.SessionEnd(), t0 + seconds(3600));
}

TEST(WatchdogClocks, ZeroMeansNoLimit) {
  WatchdogLimits l = Limits();
  l.command_timeout = seconds(0);
  l.data_min_rate = 0;
  l.max_session = seconds(0);
  WatchdogClocks c(l, t0);
  c.Progress(t0, 3, false, true);
  EXPECT_EQ(c.CommandDeadline(), Clock::time_point::max());
  c.Progress(t0, 3, true, false);
  EXPECT_EQ(c.ContentDeadline(), Clock::time_point::max());
  EXPECT_EQ(c.SessionEnd(), Clock::time_point::max());
}

}  // namespace
}  // namespace sinkline::edge
