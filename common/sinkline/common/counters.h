// The Admin services' GetCounters answer, the same for every process: each
// metric series of the registry by name, negatives as zero.
#pragma once

#include "sinkline/common/metrics.h"
#include "sinkline/v1/admin.pb.h"

namespace sinkline {

void FillCounters(const MetricsRegistry& registry,
                  v1::GetCountersResponse& response);

}  // namespace sinkline
