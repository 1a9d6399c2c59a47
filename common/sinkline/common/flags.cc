#include "sinkline/common/flags.h"

#include <algorithm>

#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"

namespace sinkline {

std::string NormalizeFlagName(const std::string& arg) {
  if (arg.size() < 3 || arg.rfind("--", 0) != 0) return arg;
  std::string out = arg;
  const auto name_end = std::min(out.find('='), out.size());
  std::replace(out.begin() + 2, out.begin() + name_end, '-', '_');
  return out;
}

std::vector<std::string> ParseFlags(int argc, char** argv) {
#ifdef NDEBUG
  // Debian's Abseil is built without NDEBUG, so absl::Mutex checks lock
  // order on every acquisition, through one graph behind one global lock.
  // Optimised builds leave that check to the debug and sanitizer builds.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  std::vector<std::string> storage;
  storage.reserve(argc);
  bool after_double_dash = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") after_double_dash = true;
    storage.push_back(i == 0 || after_double_dash ? a : NormalizeFlagName(a));
  }
  std::vector<char*> args;
  for (auto& s : storage) args.push_back(s.data());
  std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  return std::vector<std::string>(rest.begin() + 1, rest.end());
}

}  // namespace sinkline
