// Wall-clock timestamps for the contract's google.protobuf.Timestamp fields.
#pragma once

#include <google/protobuf/timestamp.pb.h>

namespace sinkline {

// Now, to the nanosecond the clock gives. (Debian 12's protobuf 3.21
// TimeUtil::GetCurrentTime() has whole seconds only, which made every
// duration measured with it zero or a whole second.)
google::protobuf::Timestamp NowTimestamp();

}  // namespace sinkline
