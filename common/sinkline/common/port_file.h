// Port files let scripts and tests start a server on port 0 and learn the
// port it bound.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace sinkline {

// Writes `port` followed by a newline to `path` atomically (temporary file
// then rename), so a reader never sees a partial number. An empty path is a
// no-op.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace sinkline
