#include "sinkline/common/memory_trim.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "sinkline/common/metrics.h"

namespace sinkline {
namespace {

// Resident memory of this process, in bytes.
uint64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

double TrimCount() {
  return MetricsRegistry::Default()
      .GetCounter("sinkline_memory_trims_total", "")
      .Value();
}

// What 10,000 closed sessions leave behind: many freed chunks, each below
// the mmap threshold, with small live ones between them so that none of
// the free space is at the top of the heap where free() alone returns it.
class FreedHoles {
 public:
  explicit FreedHoles(size_t chunks, size_t size) {
    for (size_t i = 0; i < chunks; ++i) {
      void* big = std::malloc(size);
      std::memset(big, 0x5a, size);  // resident
      big_.push_back(big);
      pins_.push_back(std::malloc(64));
    }
    for (void* p : big_) std::free(p);
  }
  ~FreedHoles() {
    for (void* p : pins_) std::free(p);
  }

 private:
  std::vector<void*> big_;
  std::vector<void*> pins_;
};

TEST(MemoryTrimTest, GivesFreedChunksInsideTheHeapBack) {
  constexpr size_t kChunks = 2048, kSize = 32 << 10;  // 64 MB
  FreedHoles holes(kChunks, kSize);
  ASSERT_GE(MemoryTrimmer::HeapFreeBytes(), kChunks * kSize);
  const uint64_t before = ResidentBytes();
  const double trims = TrimCount();
  ASSERT_TRUE(MemoryTrimmer::TrimIfWorthIt(16 << 20));
  const uint64_t after = ResidentBytes();
  EXPECT_EQ(TrimCount(), trims + 1);
  // free() alone gave nothing back; the trim returned most of the 64 MB.
  EXPECT_GE(before - std::min(before, after), uint64_t{48} << 20)
      << "resident before " << (before >> 20) << " MB, after " << (after >> 20)
      << " MB";
}

TEST(MemoryTrimTest, LeavesSmallAmountsAlone) {
  const double trims = TrimCount();
  EXPECT_FALSE(MemoryTrimmer::TrimIfWorthIt(uint64_t{1} << 40));
  EXPECT_EQ(TrimCount(), trims);
}

TEST(MemoryTrimTest, IntervalZeroIsOff) {
  MemoryTrimmer::Options o;
  o.interval = std::chrono::milliseconds(0);
  EXPECT_EQ(MemoryTrimmer::Start(o), nullptr);
  o.interval = std::chrono::milliseconds(10);
  auto t = MemoryTrimmer::Start(o);
  EXPECT_NE(t, nullptr);
  t.reset();  // stops and joins its thread
}

}  // namespace
}  // namespace sinkline
