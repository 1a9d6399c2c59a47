// Noticing that a file was replaced or rewritten, for processes that reload
// configuration, keys or certificates when their files change.
#pragma once

#include <string>

namespace sinkline {

// Device, inode, size and modification time of `path` (following symlinks), as
// a string that changes whenever the file is rewritten or another file is
// renamed over it (a Kubernetes ConfigMap or Secret update); empty when the
// file cannot be read.
std::string FileStamp(const std::string& path);

}  // namespace sinkline
