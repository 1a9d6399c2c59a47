#include "sinkline/common/time.h"

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sinkline {

google::protobuf::Timestamp NowTimestamp() {
  const int64_t nanos = absl::ToUnixNanos(absl::Now());
  google::protobuf::Timestamp t;
  t.set_seconds(nanos / 1000000000);
  t.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return t;
}

}  // namespace sinkline
