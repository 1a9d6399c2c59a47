// Leases on their own: publication and the end of a lease are one step.
#include "sink_broker/lease.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class LeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fs::temp_directory_path() /
            ("sinkline-lease-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::ofstream(path_) << "Subject: x\r\n\r\nbody\r\n";
    binding_.set_name("b");
    binding_.set_content_access(v1::CONTENT_ACCESS_READ_WRITE);
  }
  void TearDown() override {
    table_.CancelTimers();
    pool_.join();
    fs::remove(path_);
  }

  // A message whose publication takes `publish_time` and is counted.
  std::shared_ptr<MessageRecord> Message(std::chrono::milliseconds publish) {
    return std::make_shared<MessageRecord>(
        path_.string(), [this, publish](const std::vector<v1::ContentEdit>&) {
          std::this_thread::sleep_for(publish);
          ++published_;
          return absl::OkStatus();
        });
  }
  static v1::ContentEdit AddHeader() {
    v1::ContentEdit e;
    e.mutable_add_header()->set_name("X-Lease");
    e.mutable_add_header()->set_value("1");
    return e;
  }

  fs::path path_;
  v1::Binding binding_;
  boost::asio::thread_pool pool_{2};
  LeaseTable table_{pool_};
  std::atomic<int> published_{0};
};

TEST_F(LeaseTest, ConcurrentReleasesPublishOnce) {
  auto lease = table_.Grant(Message(100ms), binding_, 10s, 10s);
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::string token = (*lease)->token;
  ASSERT_TRUE(table_.StageContent(token, AddHeader()).ok());
  absl::Status a, b;
  std::thread t1([&] { a = table_.Release(token, false); });
  std::thread t2([&] { b = table_.Release(token, false); });
  t1.join();
  t2.join();
  EXPECT_EQ(published_.load(), 1);
  EXPECT_NE(a.ok(), b.ok()) << a << " / " << b;
  const absl::Status& refused = a.ok() ? b : a;
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
}

TEST_F(LeaseTest, ExpiryDuringPublicationDoesNotEndAPublishedLease) {
  auto lease = table_.Grant(Message(300ms), binding_, 50ms, 50ms);
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::atomic<int> ended_how{-1};
  (*lease)->on_end = [&](Lease::State how) {
    ended_how = static_cast<int>(how);
  };
  const std::string token = (*lease)->token;
  ASSERT_TRUE(table_.StageContent(token, AddHeader()).ok());
  // The expiry comes due while the edits are being published.
  const absl::Status st = table_.Release(token, false);
  for (int i = 0; i < 100 && ended_how < 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(published_.load(), 1);
  // Published, so released: never "expired; its writes are dropped".
  EXPECT_EQ(ended_how.load(), static_cast<int>(Lease::State::kReleased));
}

TEST_F(LeaseTest, LateReleaseAfterExpiryIsRefusedAndPublishesNothing) {
  auto lease = table_.Grant(Message(0ms), binding_, 20ms, 20ms);
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::string token = (*lease)->token;
  ASSERT_TRUE(table_.StageContent(token, AddHeader()).ok());
  // Keep the pool busy so that the expiry timer cannot run on time.
  // The flag is shared: a busy task may start only after the test body
  // returned, and must still find it set.
  auto go = std::make_shared<std::atomic<bool>>(false);
  for (int i = 0; i < 2; ++i) {
    boost::asio::post(pool_, [go] {
      while (!*go) std::this_thread::sleep_for(1ms);
    });
  }
  std::this_thread::sleep_for(60ms);  // past its expiry
  const absl::Status st = table_.Release(token, false);
  *go = true;
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(published_.load(), 0);
  for (int i = 0; i < 100 && table_.active() > 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(table_.active(), 0u);
  EXPECT_EQ(table_.Release(token, false).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(published_.load(), 0);
}

}  // namespace
}  // namespace sinkline::broker
