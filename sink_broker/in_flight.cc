#include "sink_broker/in_flight.h"

#include <boost/asio/steady_timer.hpp>

#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

namespace {

Gauge& InFlightGauge(const char* name, const char* help) {
  return MetricsRegistry::Default().GetGauge(name, help);
}

Counter& WaitsCounter(const char* outcome) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_in_flight_waits_total",
      "EODs that found every in-flight slot taken: delayed (then served) or "
      "refused with 451 4.3.2 after --in-flight-wait-ms.",
      {{"outcome", outcome}});
}

Gauge& WaitingGauge() {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_broker_in_flight_waiting",
      "EODs waiting now for an in-flight slot.");
}

// One EOD waiting for a slot: polls with a growing pause, bounded by the
// wait (a slot frees when a message reaches the queue backend).
struct Waiter : std::enable_shared_from_this<Waiter> {
  Waiter(InFlightLimit* l, Strand s, std::function<void(InFlightLimit::Slot)> d,
         std::chrono::steady_clock::time_point until)
      : limit(l), timer(s), done(std::move(d)), deadline(until) {
    WaitingGauge().Add(1);
  }

  void Poll() {
    if (auto slot = limit->TryAcquire()) {
      WaitsCounter("delayed").Inc();
      WaitingGauge().Add(-1);
      return done(std::move(slot));
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      WaitsCounter("refused").Inc();
      WaitingGauge().Add(-1);
      return done(nullptr);
    }
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
    timer.expires_after(
        std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
    auto self = shared_from_this();
    timer.async_wait(
        [self](const boost::system::error_code&) { self->Poll(); });
  }

  InFlightLimit* const limit;
  asio::steady_timer timer;
  std::function<void(InFlightLimit::Slot)> done;
  const std::chrono::steady_clock::time_point deadline;
  std::chrono::milliseconds pause{1};
};

}  // namespace

InFlightLimit::InFlightLimit(int64_t max, std::chrono::milliseconds wait)
    : max_(max), wait_(wait) {
  InFlightGauge("sinkline_broker_messages_in_flight_limit",
                "Most messages allowed between EOD and their first hand-off "
                "to the queue backend (--max-messages-in-flight; 0: none).")
      .Set(static_cast<double>(max));
  absl::MutexLock lock(&mu_);
  Publish();
}

void InFlightLimit::Publish() {
  InFlightGauge("sinkline_broker_messages_in_flight",
                "Messages between EOD and their first hand-off to the queue "
                "backend (or their hold).")
      .Set(static_cast<double>(in_flight_));
  InFlightGauge("sinkline_broker_messages_in_flight_peak",
                "The most messages in flight at once since the start.")
      .Set(static_cast<double>(peak_));
}

InFlightLimit::Slot InFlightLimit::TryAcquire() {
  {
    absl::MutexLock lock(&mu_);
    if (max_ > 0 && in_flight_ >= max_) return nullptr;
    ++in_flight_;
    peak_ = std::max(peak_, in_flight_);
    Publish();
  }
  // Non-null, and the last copy gives the slot back.
  return Slot(this,
              [](void* self) { static_cast<InFlightLimit*>(self)->Release(); });
}

void InFlightLimit::Acquire(Strand strand, std::function<void(Slot)> done) {
  if (auto slot = TryAcquire()) return done(std::move(slot));
  std::make_shared<Waiter>(this, strand, std::move(done),
                           std::chrono::steady_clock::now() + wait_)
      ->Poll();
}

void InFlightLimit::Release() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
  Publish();
}

int64_t InFlightLimit::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

int64_t InFlightLimit::peak() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

}  // namespace sinkline::broker
