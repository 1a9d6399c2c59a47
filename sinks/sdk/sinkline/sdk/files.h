// Files for sinks that keep state or copies on disk.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sinkline::sdk {

// Writes `data` to `dir`/`name` atomically: a temporary file in the same
// directory (".<name>.<pid>-<n>.tmp"), fsync when `sync`, rename over `name`,
// then fsync of the directory. Readers see the old file or the new one, never a
// part; after a crash at most a temporary file is left.
absl::Status WriteFileAtomically(const std::string& dir,
                                 const std::string& name,
                                 absl::string_view data, bool sync = true);

}  // namespace sinkline::sdk
