#include "sinkline/common/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>

#include "absl/strings/str_cat.h"

namespace sinkline {

using grpc::health::v1::HealthCheckResponse;

void GrpcServer::Stop(std::chrono::milliseconds grace) {
  if (health) health->Shutdown();
  if (server) {
    server->Shutdown(std::chrono::system_clock::now() + grace);
    server->Wait();
  }
}

absl::StatusOr<GrpcServer> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    const std::vector<std::string>& service_names) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  GrpcServer out;
  out.health = std::make_unique<HealthService>();
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(),
                           &out.port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  builder.RegisterService(out.health.get());
  out.server = builder.BuildAndStart();
  if (!out.server || out.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", listen));
  }
  out.health->SetStatus("", HealthCheckResponse::SERVING);
  for (const auto& name : service_names) {
    out.health->SetStatus(name, HealthCheckResponse::SERVING);
  }
  return out;
}

}  // namespace sinkline
