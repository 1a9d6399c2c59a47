// The spool's free space, checked before a message is taken in (issue 13),
// as Postfix's queue_minfree: with less than --spool-min-free-bytes free on
// the spool's file system, MAIL is answered 452 4.3.1 before the client
// sends a body. The edge asks the broker about MAIL only when a binding
// wants it, so while the space is low the broker adds MAIL to the binding
// map it gives the edges, and takes it out again once the space is back. A
// transaction whose content starts while the space is low is not stored
// (452 4.3.1 at its EOD).
//
// Metrics: sinkline_broker_spool_free_bytes, sinkline_broker_spool_low (1
// while below the minimum), sinkline_broker_spool_low_refusals_total{at}.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

namespace sinkline::broker {

class SpoolSpace {
 public:
  // `min_free` 0: never low.
  SpoolSpace(std::string dir, uint64_t min_free);

  // Told when the space becomes low or comes back (on the checking thread).
  void set_on_change(std::function<void(bool low)> f) {
    on_change_ = std::move(f);
  }

  // Measures the free space now (statvfs); true when below the minimum.
  bool Check();
  // What the last check found.
  bool low() const { return low_.load(); }
  uint64_t min_free() const { return min_free_; }

  // Counts a transaction refused for the space, at "mail" or "data".
  static void CountRefusal(const char* at);

 private:
  const std::string dir_;
  const uint64_t min_free_;
  std::atomic<bool> low_{false};
  std::function<void(bool)> on_change_;
};

}  // namespace sinkline::broker
