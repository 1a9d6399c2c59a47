#include "sinkline/common/process.h"

#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "sinkline/common/flags.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/common/logging.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/shutdown.h"

ABSL_FLAG(std::string, metrics_listen, "",
          "serve Prometheus metrics over HTTP on this address (off if empty)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");
ABSL_FLAG(bool, log_json, false, "log one JSON object per line");

namespace sinkline {

std::vector<std::string> InitProcess(int argc, char** argv,
                                     const std::string& process) {
  std::vector<std::string> args = ParseFlags(argc, argv);
  BlockShutdownSignals();
  InitLogging(process, absl::GetFlag(FLAGS_log_level),
              absl::GetFlag(FLAGS_log_json));
  return args;
}

int StartProcess(ProcessServices& services) {
  if (auto st = LoadGrpcTls(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 2;
  }
  if (const auto addr = absl::GetFlag(FLAGS_metrics_listen); !addr.empty()) {
    auto m = MetricsHttpServer::Start(addr, &MetricsRegistry::Default());
    if (!m.ok()) {
      spdlog::critical("{}", m.status().ToString());
      return 1;
    }
    services.metrics = std::move(*m);
    spdlog::info("metrics on port {}", services.metrics->port());
  }
  services.trimmer = MemoryTrimmer::Start(MemoryTrimmer::FromFlags());
  return 0;
}

}  // namespace sinkline
