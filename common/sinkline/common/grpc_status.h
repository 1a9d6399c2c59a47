// One mapping between absl::Status and grpc::Status: the canonical codes are
// the same numbers in both, so a code crosses the wire unchanged.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sinkline {

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace sinkline
