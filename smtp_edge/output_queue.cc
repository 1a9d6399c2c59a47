#include "smtp_edge/output_queue.h"

#include <utility>

namespace sinkline::edge {

void OutputQueue::Append(absl::string_view bytes) {
  if (sealed_) return;
  pending_.append(bytes.data(), bytes.size());
}

void OutputQueue::AppendLast(absl::string_view bytes) {
  Append(bytes);
  sealed_ = true;
}

std::string OutputQueue::Take() {
  if (writing_ || pending_.empty()) return "";
  writing_ = true;
  return std::exchange(pending_, std::string());
}

}  // namespace sinkline::edge
