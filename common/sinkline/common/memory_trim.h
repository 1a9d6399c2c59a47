// Gives memory that the process freed back to the system.
//
// glibc's malloc keeps the pages of freed chunks inside its heaps and only
// returns the free space at the very top of each heap. After a burst of
// sessions (10,000 SMTP sessions opened and closed), the edge stayed at
// 420 MB resident with every session gone: the memory was free, not leaked
// (one malloc_trim call brought the edge to 54 MB and the broker from 204 to
// 33 MB), and each burst that followed landed on fresh pages, so resident
// memory grew round after round (349, 417, 448, 458 MB). A MemoryTrimmer
// looks every --memory-trim-interval-ms at how much free memory malloc
// holds and, past --memory-trim-min-free-mb, calls malloc_trim, which
// returns the free pages inside the heaps too.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

namespace sinkline {

class MemoryTrimmer {
 public:
  struct Options {
    std::chrono::milliseconds interval{5000};  // 0: never
    uint64_t min_free_bytes = 32ull << 20;
  };

  // Starts the background check; null when options.interval is 0.
  static std::unique_ptr<MemoryTrimmer> Start(Options options);
  // From --memory-trim-interval-ms and --memory-trim-min-free-mb.
  static Options FromFlags();
  ~MemoryTrimmer();

  // One check now: when malloc holds at least `min_free_bytes` free, trims
  // and returns true. Counted in sinkline_memory_trims_total; the free
  // bytes seen go to the gauge sinkline_memory_heap_free_bytes.
  static bool TrimIfWorthIt(uint64_t min_free_bytes);
  // Bytes malloc holds in free chunks (mallinfo2's fordblks).
  static uint64_t HeapFreeBytes();

 private:
  explicit MemoryTrimmer(Options options);
  void Loop();

  const Options options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sinkline
