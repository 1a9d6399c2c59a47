// Builds a gRPC server the way every Sinkline process serves: server
// reflection and the standard health service (visible to reflection) on,
// listening on one address (port 0 picks a free port).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkline/common/health.h"

namespace sinkline {

struct GrpcServer {
  // Declared before `server` so that it outlives it.
  std::unique_ptr<HealthService> health;
  std::unique_ptr<grpc::Server> server;
  // The port actually bound.
  int port = 0;

  // Marks everything NOT_SERVING, ends health watches, and shuts the server
  // down, cancelling calls still running after `grace`.
  void Stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
};

// Starts a server on `listen` ("host:port") with `services` registered. The
// health service reports "" and each name in `service_names` (fully
// qualified, e.g. "sinkline.v1.Sink") as SERVING.
absl::StatusOr<GrpcServer> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    const std::vector<std::string>& service_names = {});

}  // namespace sinkline
