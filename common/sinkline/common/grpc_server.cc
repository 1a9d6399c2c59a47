#include "sinkline/common/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/grpc_security.h"

ABSL_FLAG(std::string, grpc_health_listen, "",
          "also serve the health service alone, in plaintext, on this "
          "address (for probes that cannot speak TLS); off if empty");

ABSL_FLAG(int32_t, grpc_max_receive_message_bytes, 4 << 20,
          "largest gRPC message this process accepts from a caller; a "
          "larger one is refused with RESOURCE_EXHAUSTED before it is "
          "handled");

namespace sinkline {

using grpc::health::v1::HealthCheckResponse;

void GrpcServer::SetHealth(const std::string& service,
                           HealthService::ServingStatus status) {
  if (health) health->SetStatus(service, status);
  if (plain_health) plain_health->SetStatus(service, status);
}

void GrpcServer::Stop(std::chrono::milliseconds grace) {
  if (health) health->Shutdown();
  if (plain_health) plain_health->Shutdown();
  if (server) {
    server->Shutdown(std::chrono::system_clock::now() + grace);
    server->Wait();
  }
  if (health_server) {
    health_server->Shutdown(std::chrono::system_clock::now());
    health_server->Wait();
  }
}

absl::StatusOr<GrpcServer> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    const std::vector<std::string>& service_names) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  GrpcServer out;
  out.health = std::make_unique<HealthService>();
  builder.AddListeningPort(listen, GrpcServerCredentials(), &out.port);
  builder.SetMaxReceiveMessageSize(
      absl::GetFlag(FLAGS_grpc_max_receive_message_bytes));
  for (grpc::Service* s : services) builder.RegisterService(s);
  builder.RegisterService(out.health.get());
  out.server = builder.BuildAndStart();
  if (!out.server || out.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", listen));
  }
  if (const auto plain = absl::GetFlag(FLAGS_grpc_health_listen);
      !plain.empty()) {
    grpc::ServerBuilder hb;
    out.plain_health = std::make_unique<HealthService>();
    hb.AddListeningPort(plain, grpc::InsecureServerCredentials(),
                        &out.health_port);
    hb.RegisterService(out.plain_health.get());
    out.health_server = hb.BuildAndStart();
    if (!out.health_server || out.health_port == 0) {
      out.Stop(std::chrono::milliseconds(0));
      return absl::UnavailableError(
          absl::StrCat("cannot listen for gRPC health on ", plain));
    }
  }
  out.SetHealth("", HealthCheckResponse::SERVING);
  for (const auto& name : service_names) {
    out.SetHealth(name, HealthCheckResponse::SERVING);
  }
  return out;
}

}  // namespace sinkline
