#include "sinkline/common/memory_trim.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/flags/flag.h"
#include "sinkline/common/metrics.h"

ABSL_FLAG(int, memory_trim_interval_ms, 5000,
          "how often to check whether malloc holds enough freed memory to "
          "give back to the system (0: never)");
ABSL_FLAG(int, memory_trim_min_free_mb, 32,
          "give freed memory back once malloc holds at least this much");

namespace sinkline {

namespace {

Counter& Trims() {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_memory_trims_total",
      "Times freed heap memory was given back to the system (malloc_trim).");
}

Gauge& HeapFree() {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_memory_heap_free_bytes",
      "Bytes malloc held in free chunks at the last check.");
}

}  // namespace

uint64_t MemoryTrimmer::HeapFreeBytes() {
  const struct mallinfo2 info = ::mallinfo2();
  return info.fordblks;
}

bool MemoryTrimmer::TrimIfWorthIt(uint64_t min_free_bytes) {
  const uint64_t free_before = HeapFreeBytes();
  HeapFree().Set(static_cast<double>(free_before));
  if (free_before < min_free_bytes) return false;
  ::malloc_trim(0);
  Trims().Inc();
  spdlog::debug("gave freed memory back: malloc held {} MB free",
                free_before >> 20);
  return true;
}

MemoryTrimmer::Options MemoryTrimmer::FromFlags() {
  Options o;
  o.interval = std::chrono::milliseconds(
      std::max(0, absl::GetFlag(FLAGS_memory_trim_interval_ms)));
  o.min_free_bytes = static_cast<uint64_t>(std::max(
                         0, absl::GetFlag(FLAGS_memory_trim_min_free_mb)))
                     << 20;
  return o;
}

std::unique_ptr<MemoryTrimmer> MemoryTrimmer::Start(Options options) {
  if (options.interval.count() <= 0) return nullptr;
  Trims();  // the metrics exist from the start
  HeapFree();
  return std::unique_ptr<MemoryTrimmer>(new MemoryTrimmer(options));
}

MemoryTrimmer::MemoryTrimmer(Options options)
    : options_(options), thread_([this] { Loop(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void MemoryTrimmer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, options_.interval, [this] { return stop_; })) {
    lock.unlock();
    TrimIfWorthIt(options_.min_free_bytes);
    lock.lock();
  }
}

}  // namespace sinkline
