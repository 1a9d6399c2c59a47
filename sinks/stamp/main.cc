// sinkline-sink-stamp: a sink service that stamps every message it sees.
#include <spdlog/spdlog.h>

#include <string>

#include "absl/flags/flag.h"
#include "sinkline/common/flags.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/common/logging.h"
#include "sinkline/common/port_file.h"
#include "sinkline/common/shutdown.h"
#include "stamp_sink.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7100",
          "gRPC address to serve on (port 0 picks a free port)");
ABSL_FLAG(std::string, port_file, "",
          "write the bound port to this file once serving");
ABSL_FLAG(std::string, name, "stamp", "sink name written into the header");
ABSL_FLAG(std::string, header, "X-Sinkline-Stamp", "header field to add");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");
ABSL_FLAG(bool, log_json, false, "log one JSON object per line");

int main(int argc, char** argv) {
  sinkline::ParseFlags(argc, argv);
  sinkline::BlockShutdownSignals();
  sinkline::InitLogging("stamp", absl::GetFlag(FLAGS_log_level),
                        absl::GetFlag(FLAGS_log_json));

  sinkline::sinks::StampSink sink(absl::GetFlag(FLAGS_name),
                                  absl::GetFlag(FLAGS_header));
  auto server = sinkline::StartGrpcServer(absl::GetFlag(FLAGS_listen), {&sink},
                                          {"sinkline.v1.Sink"});
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  if (auto st =
          sinkline::WritePortFile(absl::GetFlag(FLAGS_port_file), server->port);
      !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  spdlog::info("stamp sink serving on port {}", server->port);
  int sig = sinkline::WaitForShutdownSignal();
  spdlog::info("signal {}: shutting down", sig);
  server->Stop();
  return 0;
}
