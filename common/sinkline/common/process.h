// The start every Sinkline process shares. The flags it reads are defined
// here once, for every binary:
//   --log-level, --log-json  logging (common/logging.h);
//   --metrics-listen         Prometheus metrics over HTTP (off if empty);
//   --memory-trim-*          freed memory given back (common/memory_trim.h).
// A main calls InitProcess() first, reads its own flags, then calls
// StartProcess() and keeps what it returns until it exits.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sinkline/common/memory_trim.h"
#include "sinkline/common/metrics_http.h"

namespace sinkline {

// Parses the command line (ParseFlags: dashes or underscores), blocks the
// shutdown signals for WaitForShutdownSignal, and sets up logging as
// `process`. Call it before any other thread starts. Returns the positional
// arguments.
std::vector<std::string> InitProcess(int argc, char** argv,
                                     const std::string& process);

// What StartProcess brought up.
struct ProcessServices {
  std::unique_ptr<MetricsHttpServer> metrics;  // null without the flag
  std::unique_ptr<MemoryTrimmer> trimmer;      // null with interval 0
};

// Loads the gRPC TLS files (LoadGrpcTls) and serves the metrics registry on
// --metrics-listen, and starts the memory trimmer. On failure it logs why and
// returns the exit code: 2 for unusable gRPC TLS flags or files, 1 for a
// metrics address that cannot be served. 0 when all is up.
int StartProcess(ProcessServices& services);

}  // namespace sinkline
