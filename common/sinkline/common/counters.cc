#include "sinkline/common/counters.h"

#include <cstdint>

namespace sinkline {

void FillCounters(const MetricsRegistry& registry,
                  v1::GetCountersResponse& response) {
  for (const auto& [name, value] : registry.Values()) {
    auto* c = response.add_counters();
    c->set_name(name);
    c->set_value(value < 0 ? 0 : static_cast<uint64_t>(value));
  }
}

}  // namespace sinkline
