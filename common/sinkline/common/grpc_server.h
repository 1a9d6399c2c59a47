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
  // Declared before the servers so that they outlive them.
  std::unique_ptr<HealthService> health;
  std::unique_ptr<HealthService> plain_health;
  std::unique_ptr<grpc::Server> server;
  // With --grpc-health-listen: a plaintext server with only the health
  // service (and reflection), for probes that cannot speak TLS (Kubernetes'
  // native gRPC probes) while `server` requires TLS.
  std::unique_ptr<grpc::Server> health_server;
  // The ports actually bound.
  int port = 0;
  int health_port = 0;

  // Sets one service's health on every server.
  void SetHealth(const std::string& service,
                 HealthService::ServingStatus status);

  // Marks everything NOT_SERVING, ends health watches, and shuts the server
  // down, cancelling calls still running after `grace`.
  void Stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
};

// Starts a server on `listen` ("host:port") with `services` registered,
// with the control plane's credentials (grpc_security.h). The health
// service reports "" and each name in `service_names` (fully qualified,
// e.g. "sinkline.v1.Sink") as SERVING.
absl::StatusOr<GrpcServer> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    const std::vector<std::string>& service_names = {});

}  // namespace sinkline
