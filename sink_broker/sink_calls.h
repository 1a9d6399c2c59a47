// Sink calls in flight, bounded per binding (issue 13): a slow sink must
// not collect an unbounded number of calls (each holds a lease, its
// snapshot's descriptor and the message). A call past its binding's limit
// waits for a slot, in arrival order, up to the call's own deadline; past
// it the call counts as a deadline miss and the binding's failure policy
// applies. The limit is the binding's `max_in_flight`, else the broker's
// --max-sink-calls-in-flight (0: no limit).
//
// Metrics: sinkline_sink_calls_in_flight{binding} (now),
// sinkline_sink_calls_waiting{binding} (waiting for a slot now),
// sinkline_sink_call_waits_total{binding,outcome="delayed"|"deadline"}.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "sink_broker/config.h"

namespace sinkline::broker {

using Strand = boost::asio::strand<boost::asio::thread_pool::executor_type>;

class SinkCallLimits {
 public:
  // `default_max`: the limit of a binding without its own (0: none).
  explicit SinkCallLimits(uint32_t default_max) : default_max_(default_max) {}
  ~SinkCallLimits();

  // A call's slot, given back when the last copy goes.
  using Slot = std::shared_ptr<void>;

  // The limit that applies to a binding with `max_in_flight`.
  uint32_t LimitOf(uint32_t max_in_flight) const {
    return max_in_flight > 0 ? max_in_flight : default_max_;
  }

  // Calls `done` with a slot for `binding` once one is free (at once, on
  // this thread, when one is), or with nullptr at `deadline` (on `strand`).
  // A waiting call is given a freed slot on `strand`.
  void Acquire(const BindingConfig& binding, Strand strand,
               std::chrono::steady_clock::time_point deadline,
               std::function<void(Slot)> done);

  // Calls of `binding` holding a slot now, and waiting for one.
  int64_t in_flight(const std::string& binding) const;
  int64_t waiting(const std::string& binding) const;

 private:
  struct Waiter;
  struct PerBinding {
    int64_t in_flight = 0;
    std::deque<std::shared_ptr<Waiter>> waiters;
  };
  Slot MakeSlot(const std::string& binding);
  void Release(const std::string& binding);
  void TimedOut(const std::shared_ptr<Waiter>& w);

  const uint32_t default_max_;
  mutable absl::Mutex mu_;
  std::map<std::string, PerBinding> bindings_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkline::broker
