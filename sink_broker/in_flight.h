// Bounded in-flight work: messages from EOD through COMMIT until their first
// hand-off to the queue backend (or their hold) take a slot. With every
// slot taken an EOD waits for one (the client waits for its reply, so the
// edge reads nothing more from it, as Postfix's in_flow_delay slows a
// sender); past the wait it is answered 451 4.3.2. Never an unbounded queue
// of committed work.
//
// Metrics: sinkline_broker_messages_in_flight (now),
// sinkline_broker_messages_in_flight_peak (the most at once since start),
// sinkline_broker_messages_in_flight_limit,
// sinkline_broker_in_flight_waiting (EODs waiting now) and
// sinkline_broker_in_flight_waits_total{outcome="delayed"|"refused"}.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "sink_broker/chain.h"

namespace sinkline::broker {

class InFlightLimit {
 public:
  // `max` 0: no limit (slots are still counted).
  InFlightLimit(int64_t max, std::chrono::milliseconds wait);

  // A slot, given back when the last copy goes (or at Release).
  using Slot = std::shared_ptr<void>;
  Slot TryAcquire();
  // Calls `done` on `strand` with a slot once one is free, or with nullptr
  // once the wait is over.
  void Acquire(Strand strand, std::function<void(Slot)> done);

  int64_t in_flight() const;
  int64_t peak() const;
  int64_t max() const { return max_; }

 private:
  void Release();
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t max_;
  const std::chrono::milliseconds wait_;
  mutable absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sinkline::broker
