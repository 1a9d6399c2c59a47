// Sink calls in flight per binding (issue 13), through the chain engine
// with a fake SinkInvoker that holds each call until the test answers it:
// past the binding's max_in_flight (or the broker's default) a call waits
// for a slot; a slot freed goes to it; with no slot within its deadline the
// binding's failure policy applies.
#include "sink_broker/sink_calls.h"

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <future>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "sink_broker/chain.h"
#include "sink_broker/config.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// Keeps every call until Answer().
class HoldingInvoker : public SinkInvoker {
 public:
  void Invoke(const SinkConfig&, std::shared_ptr<const v1::SinkRequest>,
              std::chrono::system_clock::time_point, Done done) override {
    absl::MutexLock lock(&mu_);
    held_.push_back(std::move(done));
    ++calls_;
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  // Answers the oldest held call with CONTINUE.
  void Answer() {
    Done d;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(held_.empty());
      d = std::move(held_.front());
      held_.erase(held_.begin());
    }
    v1::Verdict v;
    v.set_action(v1::ACTION_CONTINUE);
    d(v);
  }

 private:
  absl::Mutex mu_;
  std::vector<Done> held_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
};

bool WaitFor(const std::function<bool()>& cond) {
  for (int i = 0; i < 500; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

class SinkCallsTest : public ::testing::Test {
 protected:
  void TearDown() override { pool_.join(); }

  void Configure(const std::string& extra, uint32_t default_max = 0) {
    binding_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    auto c = ParseConfig(
        "sinks:\n  - name: fake\n    target: fake:1\nbindings:\n  - name: " +
            binding_ + "\n    sink: fake\n    event: MAIL\n    priority: 10\n" +
            extra,
        "test.yaml");
    ASSERT_TRUE(c.ok()) << c.status();
    config_ = std::make_shared<const Config>(std::move(*c));
    limits_ = std::make_unique<SinkCallLimits>(default_max);
  }

  // Starts a MAIL event's chain; its reply arrives in the future.
  std::future<v1::Reply> Start() {
    v1::Event e;
    e.set_type(v1::EVENT_TYPE_MAIL);
    e.mutable_envelope()->set_mail_from("a@example.net");
    *e.mutable_native_reply() = MakeReply(250, "2.1.0", "native");
    ChainEnv env{.sinks = &sinks_,
                 .leases = &leases_,
                 .messages = &messages_,
                 .options = &options_,
                 .call_limits = limits_.get(),
                 .finished = nullptr,
                 .quarantined = nullptr,
                 .envelope_published = nullptr};
    auto run = std::make_shared<ChainRun>(env, asio::make_strand(pool_),
                                          config_, std::move(e));
    auto done = std::make_shared<std::promise<v1::Reply>>();
    auto f = done->get_future();
    asio::post(pool_, [run, done] {
      run->Run(nullptr, nullptr,
               [done](ChainRun& r) { done->set_value(r.reply()); });
    });
    return f;
  }

  double Waits(const char* outcome) {
    return MetricsRegistry::Default()
        .GetCounter("sinkline_sink_call_waits_total", "",
                    {{"binding", binding_}, {"outcome", outcome}})
        .Value();
  }

  asio::thread_pool pool_{2};
  HoldingInvoker sinks_;
  LeaseTable leases_{pool_};
  MessageTable messages_;
  ChainOptions options_{.advertise = "127.0.0.1:1"};
  std::shared_ptr<const Config> config_;
  std::unique_ptr<SinkCallLimits> limits_;
  std::string binding_;
};

TEST_F(SinkCallsTest, AtTheLimitACallWaitsForASlot) {
  Configure("    deadline_ms: 20000\n    max_in_flight: 2\n");
  std::vector<std::future<v1::Reply>> replies;
  for (int i = 0; i < 3; ++i) replies.push_back(Start());
  ASSERT_TRUE(WaitFor([&] { return limits_->waiting(binding_) == 1; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(sinks_.calls(), 2);  // the third waits for a slot
  EXPECT_EQ(limits_->in_flight(binding_), 2);
  sinks_.Answer();
  ASSERT_TRUE(WaitFor([&] { return sinks_.calls() == 3; }));
  EXPECT_EQ(limits_->waiting(binding_), 0);
  EXPECT_EQ(limits_->in_flight(binding_), 2);
  sinks_.Answer();
  sinks_.Answer();
  for (auto& r : replies) {
    ASSERT_EQ(r.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(r.get().code(), 250u);  // the native reply: nobody failed
  }
  EXPECT_EQ(limits_->in_flight(binding_), 0);
  EXPECT_EQ(Waits("delayed"), 1);
  EXPECT_EQ(Waits("deadline"), 0);
}

TEST_F(SinkCallsTest, NoSlotWithinTheDeadlineIsAFailure) {
  Configure(
      "    deadline_ms: 300\n    max_in_flight: 1\n"
      "    failure_policy: tempfail\n");
  auto first = Start();
  ASSERT_TRUE(WaitFor([&] { return sinks_.calls() == 1; }));
  auto second = Start();
  // The tempfail policy, past the 300 ms deadline, without a call.
  ASSERT_EQ(second.wait_for(10s), std::future_status::ready);
  const v1::Reply r = second.get();
  EXPECT_EQ(r.code(), 451u);
  EXPECT_EQ(r.enhanced_code(), "4.3.0");
  EXPECT_EQ(sinks_.calls(), 1);
  EXPECT_EQ(Waits("deadline"), 1);
  sinks_.Answer();
  ASSERT_EQ(first.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(first.get().code(), 250u);
}

TEST_F(SinkCallsTest, BindingsWithoutTheirOwnLimitGetTheDefault) {
  Configure("    deadline_ms: 20000\n", /*default_max=*/1);
  auto first = Start();
  auto second = Start();
  ASSERT_TRUE(WaitFor([&] { return limits_->waiting(binding_) == 1; }));
  EXPECT_EQ(sinks_.calls(), 1);
  sinks_.Answer();
  ASSERT_TRUE(WaitFor([&] { return sinks_.calls() == 2; }));
  sinks_.Answer();
  EXPECT_EQ(first.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(second.wait_for(10s), std::future_status::ready);
}

TEST_F(SinkCallsTest, MaxInFlightIsReadAndWrittenBack) {
  Configure("    max_in_flight: 7\n");
  ASSERT_EQ(config_->bindings.size(), 1u);
  EXPECT_EQ(config_->bindings[0].max_in_flight, 7u);
  EXPECT_NE(BindingsToYaml(config_->bindings).find("max_in_flight: 7"),
            std::string::npos);
  auto bad = ParseConfig(
      "sinks:\n  - name: fake\n    target: fake:1\nbindings:\n  - name: x\n"
      "    sink: fake\n    event: MAIL\n    max_in_flight: -1\n",
      "bad.yaml");
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace sinkline::broker
