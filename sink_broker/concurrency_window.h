// Slow start of the concurrency towards one destination, as Postfix's
// qmgr does it (initial_destination_concurrency,
// default_destination_concurrency_limit): a new destination gets a few
// deliveries in flight at once; each delivery that completes raises the
// window by one up to the limit; a connection that fails (refused, timed
// out, a 4xx greeting or EHLO, a failed TLS handshake) lowers it by one,
// never below one, so a struggling next hop is not hit by the full limit.
//
// A value type with no sockets and no locks: the caller (the relay's cache)
// holds it under its own lock.
#pragma once

#include <algorithm>

namespace sinkline::broker {

class ConcurrencyWindow {
 public:
  // `initial` is clamped to [1, limit]; a limit below 1 is 1.
  ConcurrencyWindow(int initial, int limit)
      : limit_(std::max(1, limit)), window_(std::clamp(initial, 1, limit_)) {}

  // Deliveries that may be in flight now.
  int window() const { return window_; }
  int limit() const { return limit_; }
  // Whether one more may start while `in_flight` are going.
  bool Admits(int in_flight) const { return in_flight < window_; }

  // A delivery completed in step with the next hop (whatever it answered
  // per recipient): one more may go at once, up to the limit.
  void Success() { window_ = std::min(limit_, window_ + 1); }
  // A connection to the next hop failed: one fewer, never below one.
  void Failure() { window_ = std::max(1, window_ - 1); }

 private:
  int limit_;
  int window_;
};

}  // namespace sinkline::broker
