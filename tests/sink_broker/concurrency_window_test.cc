#include "sink_broker/concurrency_window.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

TEST(ConcurrencyWindow, StartsAtTheInitialConcurrencyAndGrowsByOnePerSuccess) {
  ConcurrencyWindow w(5, 20);
  EXPECT_EQ(w.window(), 5);
  EXPECT_TRUE(w.Admits(4));
  EXPECT_FALSE(w.Admits(5));
  for (int i = 6; i <= 20; ++i) {
    w.Success();
    EXPECT_EQ(w.window(), i);
  }
  w.Success();  // never above the limit
  EXPECT_EQ(w.window(), 20);
  EXPECT_TRUE(w.Admits(19));
  EXPECT_FALSE(w.Admits(20));
}

TEST(ConcurrencyWindow, BacksOffByOnePerFailureNeverBelowOne) {
  ConcurrencyWindow w(5, 20);
  w.Failure();
  EXPECT_EQ(w.window(), 4);
  for (int i = 0; i < 10; ++i) w.Failure();
  EXPECT_EQ(w.window(), 1);
  EXPECT_TRUE(w.Admits(0));
  EXPECT_FALSE(w.Admits(1));
  // And grows back with successes.
  w.Success();
  w.Success();
  EXPECT_EQ(w.window(), 3);
}

TEST(ConcurrencyWindow, ClampsItsBounds) {
  EXPECT_EQ(ConcurrencyWindow(50, 20).window(), 20);  // initial above limit
  EXPECT_EQ(ConcurrencyWindow(0, 20).window(), 1);    // at least one
  ConcurrencyWindow none(5, 0);                       // a limit below one
  EXPECT_EQ(none.limit(), 1);
  EXPECT_EQ(none.window(), 1);
  // initial == limit: no slow start.
  ConcurrencyWindow flat(20, 20);
  EXPECT_EQ(flat.window(), 20);
}

}  // namespace
}  // namespace sinkline::broker
