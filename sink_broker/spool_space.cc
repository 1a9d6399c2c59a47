#include "sink_broker/spool_space.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include "sinkline/common/metrics.h"

namespace sinkline::broker {

SpoolSpace::SpoolSpace(std::string dir, uint64_t min_free)
    : dir_(std::move(dir)), min_free_(min_free) {
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_spool_min_free_bytes",
                "Free space the spool's file system must keep; below it MAIL "
                "is answered 452 4.3.1 (--spool-min-free-bytes).")
      .Set(static_cast<double>(min_free));
}

bool SpoolSpace::Check() {
  if (min_free_ == 0 || dir_.empty()) return false;
  struct statvfs st {};
  if (::statvfs(dir_.c_str(), &st) != 0) return low_.load();
  const uint64_t free_bytes =
      static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_spool_free_bytes",
                "Free space on the spool's file system (for unprivileged "
                "writers), at the last check.")
      .Set(static_cast<double>(free_bytes));
  const bool low = free_bytes < min_free_;
  const bool was = low_.exchange(low);
  if (low != was) {
    MetricsRegistry::Default()
        .GetGauge("sinkline_broker_spool_low",
                  "1 while the spool's free space is below "
                  "--spool-min-free-bytes (MAIL answered 452 4.3.1).")
        .Set(low ? 1 : 0);
    if (low) {
      spdlog::error(
          "spool {}: {} bytes free, under --spool-min-free-bytes={}; new "
          "transactions are answered 452 4.3.1",
          dir_, free_bytes, min_free_);
    } else {
      spdlog::info("spool {}: {} bytes free again; taking mail", dir_,
                   free_bytes);
    }
    if (on_change_) on_change_(low);
  }
  return low;
}

void SpoolSpace::CountRefusal(const char* at) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_spool_low_refusals_total",
                  "Transactions answered 452 4.3.1 because the spool's free "
                  "space was below --spool-min-free-bytes, by where: at MAIL "
                  "or when the content started.",
                  {{"at", at}})
      .Inc();
}

}  // namespace sinkline::broker
