#include "sink_broker/sink_calls.h"

#include <boost/asio/post.hpp>
#include <vector>

#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

namespace {

Gauge& InFlightGauge(const std::string& binding) {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_sink_calls_in_flight", "Sink calls under way, by binding.",
      {{"binding", binding}});
}

Gauge& WaitingGauge(const std::string& binding) {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_sink_calls_waiting",
      "Sink calls waiting for a slot of their binding's max_in_flight (or "
      "--max-sink-calls-in-flight), by binding.",
      {{"binding", binding}});
}

Counter& WaitsCounter(const std::string& binding, const char* outcome) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_sink_call_waits_total",
      "Sink calls that found every slot of their binding taken: delayed "
      "(then made) or deadline (no slot within the call's deadline; the "
      "binding's failure policy applied).",
      {{"binding", binding}, {"outcome", outcome}});
}

}  // namespace

struct SinkCallLimits::Waiter {
  Waiter(Strand s, std::string b, uint32_t m, std::function<void(Slot)> d)
      : strand(s),
        timer(s),
        binding(std::move(b)),
        max(m),
        done(std::move(d)) {}
  Strand strand;
  asio::steady_timer timer;
  const std::string binding;
  const uint32_t max;
  std::function<void(Slot)> done;
  // Given a slot or timed out (under the table's lock).
  bool settled = false;
};

SinkCallLimits::~SinkCallLimits() {
  absl::MutexLock lock(&mu_);
  bindings_.clear();
}

SinkCallLimits::Slot SinkCallLimits::MakeSlot(const std::string& binding) {
  return Slot(static_cast<void*>(this), [binding](void* self) {
    static_cast<SinkCallLimits*>(self)->Release(binding);
  });
}

void SinkCallLimits::Acquire(const BindingConfig& binding, Strand strand,
                             std::chrono::steady_clock::time_point deadline,
                             std::function<void(Slot)> done) {
  const uint32_t max = LimitOf(binding.max_in_flight);
  const std::string& name = binding.spec.name();
  {
    absl::MutexLock lock(&mu_);
    PerBinding& b = bindings_[name];
    if (max == 0 || (b.in_flight < max && b.waiters.empty())) {
      ++b.in_flight;
      InFlightGauge(name).Add(1);
    } else {
      auto w = std::make_shared<Waiter>(strand, name, max, std::move(done));
      b.waiters.push_back(w);
      WaitingGauge(name).Add(1);
      w->timer.expires_at(deadline);
      w->timer.async_wait(
          [this, w](const boost::system::error_code&) { TimedOut(w); });
      return;
    }
  }
  done(MakeSlot(name));
}

void SinkCallLimits::TimedOut(const std::shared_ptr<Waiter>& w) {
  {
    absl::MutexLock lock(&mu_);
    if (w->settled) return;  // given a slot; its cancel brought us here
    w->settled = true;
    auto& q = bindings_[w->binding].waiters;
    for (auto it = q.begin(); it != q.end(); ++it) {
      if (*it == w) {
        q.erase(it);
        break;
      }
    }
  }
  WaitingGauge(w->binding).Add(-1);
  WaitsCounter(w->binding, "deadline").Inc();
  auto done = std::move(w->done);
  done(nullptr);
}

void SinkCallLimits::Release(const std::string& binding) {
  std::vector<std::shared_ptr<Waiter>> given;
  {
    absl::MutexLock lock(&mu_);
    PerBinding& b = bindings_[binding];
    --b.in_flight;
    // In arrival order, while the first waiter's limit has room.
    while (!b.waiters.empty() && b.in_flight < b.waiters.front()->max) {
      auto w = std::move(b.waiters.front());
      b.waiters.pop_front();
      w->settled = true;
      ++b.in_flight;
      given.push_back(std::move(w));
    }
  }
  InFlightGauge(binding).Add(static_cast<double>(given.size()) - 1);
  for (auto& w : given) {
    WaitingGauge(binding).Add(-1);
    WaitsCounter(binding, "delayed").Inc();
    Slot slot = MakeSlot(binding);
    // The timer is only touched on its strand.
    asio::post(w->strand, [w, slot = std::move(slot)]() mutable {
      w->timer.cancel();
      auto done = std::move(w->done);
      done(std::move(slot));
    });
  }
}

int64_t SinkCallLimits::in_flight(const std::string& binding) const {
  absl::MutexLock lock(&mu_);
  auto it = bindings_.find(binding);
  return it == bindings_.end() ? 0 : it->second.in_flight;
}

int64_t SinkCallLimits::waiting(const std::string& binding) const {
  absl::MutexLock lock(&mu_);
  auto it = bindings_.find(binding);
  return it == bindings_.end()
             ? 0
             : static_cast<int64_t>(it->second.waiters.size());
}

}  // namespace sinkline::broker
