// The standard health service (grpc.health.v1.Health) built from our own
// compiled health.proto, so that reflection can describe it (the library's
// default health service is invisible to reflection).
#pragma once

#include <grpcpp/grpcpp.h>

#include <map>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace sinkline {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Sets the status of one service ("" for the whole server) and tells its
  // watchers.
  void SetStatus(const std::string& service, ServingStatus status);
  // Sets every known service and the server to `status` (e.g. NOT_SERVING
  // when draining).
  void SetAll(ServingStatus status);
  // Ends every Watch stream; call before shutting the server down.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request,
      grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  class Watcher;

 private:
  ServingStatus StatusLocked(const std::string& service) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  friend class Watcher;
  void Unregister(Watcher* w);

  absl::Mutex mu_;
  std::map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sinkline
