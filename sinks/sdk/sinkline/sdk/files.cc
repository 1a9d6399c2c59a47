#include "sinkline/sdk/files.h"

#include "absl/strings/str_cat.h"
#include "sinkline/common/durable_file.h"

namespace sinkline::sdk {

absl::Status WriteFileAtomically(const std::string& dir,
                                 const std::string& name,
                                 absl::string_view data, bool sync) {
  return sinkline::WriteFileDurably(absl::StrCat(dir, "/", name), data, sync);
}

}  // namespace sinkline::sdk
