// Command-line flags: Abseil flags, spelled with dashes or underscores.
#pragma once

#include <string>
#include <vector>

namespace sinkline {

// Parses argv with absl::ParseCommandLine after turning every flag name's
// dashes into underscores, so `--port-file=x` and `--port_file=x` are the
// same flag. Returns the positional arguments. Every Sinkline process calls
// it first; in optimised builds (NDEBUG) it also turns off absl::Mutex's
// lock-order check, which the debug and asan builds keep.
std::vector<std::string> ParseFlags(int argc, char** argv);

// The rewriting alone, for tests: "--port-file=a-b" -> "--port_file=a-b".
std::string NormalizeFlagName(const std::string& arg);

}  // namespace sinkline
