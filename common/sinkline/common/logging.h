// Logging set-up shared by every process: one line per notable event on
// stderr, as text or as JSON.
#pragma once

#include <string>

namespace sinkline {

// Configures the default spdlog logger. `level` is one of trace, debug,
// info, warn, error; `json` switches to one JSON object per line.
void InitLogging(const std::string& process, const std::string& level,
                 bool json);

}  // namespace sinkline
