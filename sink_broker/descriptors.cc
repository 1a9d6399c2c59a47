#include "sink_broker/descriptors.h"

#include <sys/resource.h>

#include <algorithm>

#include "sinkline/common/metrics.h"

namespace sinkline::broker {

MessageDescriptors& MessageDescriptors::Default() {
  static auto* table = new MessageDescriptors();
  return *table;
}

int64_t MessageDescriptors::DefaultLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
    return 0;
  }
  const auto soft = static_cast<int64_t>(rl.rlim_cur);
  const int64_t reserve = std::max<int64_t>(64, soft / 4);
  return std::max<int64_t>(8, soft - reserve);
}

void MessageDescriptors::set_limit(int64_t limit) {
  absl::MutexLock lock(&mu_);
  limit_ = std::max<int64_t>(0, limit);
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_message_descriptors_limit",
                "Most descriptors held for messages before new transactions "
                "are answered 451 4.3.2 (--max-message-descriptors).")
      .Set(static_cast<double>(limit_));
  Publish();
}

int64_t MessageDescriptors::limit() const {
  absl::MutexLock lock(&mu_);
  return limit_;
}

void MessageDescriptors::Publish() {
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_message_descriptors",
                "Descriptors held now for messages: arriving files and lease "
                "snapshots.")
      .Set(static_cast<double>(in_use_));
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_message_descriptors_peak",
                "The most descriptors held for messages at once since the "
                "start.")
      .Set(static_cast<double>(peak_));
}

MessageDescriptors::Hold MessageDescriptors::TryAcquire() {
  {
    absl::MutexLock lock(&mu_);
    if (limit_ > 0 && in_use_ >= limit_) {
      MetricsRegistry::Default()
          .GetCounter("sinkline_broker_descriptor_refusals_total",
                      "Transactions answered 451 4.3.2 because the broker "
                      "held --max-message-descriptors for messages.")
          .Inc();
      return nullptr;
    }
    ++in_use_;
    peak_ = std::max(peak_, in_use_);
    Publish();
  }
  return Hold(this, [](void* self) {
    static_cast<MessageDescriptors*>(self)->Remove();
  });
}

void MessageDescriptors::Add() {
  absl::MutexLock lock(&mu_);
  ++in_use_;
  peak_ = std::max(peak_, in_use_);
  Publish();
}

void MessageDescriptors::Remove() {
  absl::MutexLock lock(&mu_);
  --in_use_;
  Publish();
}

int64_t MessageDescriptors::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

int64_t MessageDescriptors::peak() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

}  // namespace sinkline::broker
