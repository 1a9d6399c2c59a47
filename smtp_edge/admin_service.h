// sinkline.v1.EdgeAdmin: what operators ask an edge (open sessions,
// counters) and tell it (drain). Calls need the operator credential
// (grpc_security.h).
#pragma once

#include <chrono>
#include <functional>

#include "sinkline/common/grpc_security.h"
#include "sinkline/v1/admin.grpc.pb.h"
#include "smtp_edge/server.h"

namespace sinkline::edge {

class EdgeAdminService final : public v1::EdgeAdmin::CallbackService {
 public:
  // `drain(grace)` starts a drain that ends within `grace`; it must return
  // at once.
  EdgeAdminService(Server* server, AdminGuard guard,
                   std::function<void(std::chrono::milliseconds)> drain)
      : server_(server), guard_(std::move(guard)), drain_(std::move(drain)) {}

  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
      v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* GetCounters(grpc::CallbackServerContext* ctx,
                                        const v1::GetCountersRequest* req,
                                        v1::GetCountersResponse* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx,
                                  const v1::DrainRequest* req,
                                  v1::DrainResponse* resp) override;

 private:
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx,
                                   const grpc::Status& st);
  Server* const server_;
  const AdminGuard guard_;
  const std::function<void(std::chrono::milliseconds)> drain_;
};

}  // namespace sinkline::edge
