#include "sink_broker/in_flight.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "sinkline/common/failpoint.h"

namespace sinkline::broker {
namespace {

namespace asio = boost::asio;
using std::chrono::milliseconds;

TEST(InFlightLimitTest, SlotsAreBoundedAndComeBack) {
  InFlightLimit limit(2, milliseconds(10));
  auto a = limit.TryAcquire();
  auto b = limit.TryAcquire();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(limit.TryAcquire(), nullptr);
  EXPECT_EQ(limit.in_flight(), 2);
  auto copy = a;  // a slot goes back with its last copy
  a.reset();
  EXPECT_EQ(limit.TryAcquire(), nullptr);
  copy.reset();
  EXPECT_EQ(limit.in_flight(), 1);
  EXPECT_NE(limit.TryAcquire(), nullptr);  // and is given back at once
  EXPECT_EQ(limit.peak(), 2);
}

TEST(InFlightLimitTest, NoLimitStillCounts) {
  InFlightLimit limit(0, milliseconds(10));
  std::vector<InFlightLimit::Slot> slots;
  for (int i = 0; i < 50; ++i) slots.push_back(limit.TryAcquire());
  for (const auto& s : slots) EXPECT_NE(s, nullptr);
  EXPECT_EQ(limit.in_flight(), 50);
  slots.clear();
  EXPECT_EQ(limit.in_flight(), 0);
}

TEST(InFlightLimitTest, AcquireWaitsForAFreedSlot) {
  asio::thread_pool pool(2);
  InFlightLimit limit(1, std::chrono::seconds(60));
  auto held = limit.TryAcquire();
  ASSERT_NE(held, nullptr);
  absl::Notification got;
  InFlightLimit::Slot slot;
  limit.Acquire(asio::make_strand(pool), [&](InFlightLimit::Slot s) {
    slot = std::move(s);
    got.Notify();
  });
  EXPECT_FALSE(got.HasBeenNotified());
  held.reset();
  ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_NE(slot, nullptr);
  EXPECT_EQ(limit.in_flight(), 1);
  slot.reset();
  pool.join();
}

TEST(InFlightLimitTest, AcquireGivesUpAfterTheWait) {
  asio::thread_pool pool(1);
  InFlightLimit limit(1, milliseconds(20));
  auto held = limit.TryAcquire();
  absl::Notification got;
  bool empty = false;
  limit.Acquire(asio::make_strand(pool), [&](InFlightLimit::Slot s) {
    empty = s == nullptr;
    got.Notify();
  });
  ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(empty);
  EXPECT_EQ(limit.in_flight(), 1);
  pool.join();
}

TEST(FailpointTableTest, NamesAreUniqueAndDotted) {
  std::set<std::string> names;
  for (size_t i = 0; i < kFailpointCount; ++i) {
    const std::string name = kFailpoints[i].name;
    EXPECT_NE(name.find('.'), std::string::npos) << name;
    EXPECT_NE(std::string(kFailpoints[i].where), "") << name;
    EXPECT_TRUE(names.insert(name).second) << "twice: " << name;
  }
  EXPECT_GT(names.size(), 10u);
}

}  // namespace
}  // namespace sinkline::broker
