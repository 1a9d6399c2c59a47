// Builds a gRPC server the way every Sinkline process serves: server
// reflection and the standard health service on, listening on one address
// (port 0 picks a free port).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkline {

struct GrpcServer {
  std::unique_ptr<grpc::Server> server;
  // The port actually bound.
  int port = 0;
};

// Starts a server on `listen` ("host:port") with `services` registered.
// Marks every service as SERVING in the health service.
absl::StatusOr<GrpcServer> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services);

}  // namespace sinkline
