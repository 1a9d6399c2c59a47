#include "smtp_edge/admin_service.h"

#include <spdlog/spdlog.h>

#include "sinkline/common/counters.h"
#include "sinkline/common/metrics.h"

namespace sinkline::edge {

grpc::ServerUnaryReactor* EdgeAdminService::Finish(
    grpc::CallbackServerContext* ctx, const grpc::Status& st) {
  if (!st.ok()) {
    spdlog::warn("admin call from {} refused: {}", ctx->peer(),
                 st.error_message());
  }
  auto* r = ctx->DefaultReactor();
  r->Finish(st);
  return r;
}

grpc::ServerUnaryReactor* EdgeAdminService::ListSessions(
    grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest*,
    v1::ListSessionsResponse* resp) {
  if (auto st = guard_.Check(*ctx); !st.ok()) return Finish(ctx, st);
  for (auto& s : server_->ListSessions()) *resp->add_sessions() = std::move(s);
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* EdgeAdminService::GetCounters(
    grpc::CallbackServerContext* ctx, const v1::GetCountersRequest*,
    v1::GetCountersResponse* resp) {
  if (auto st = guard_.Check(*ctx); !st.ok()) return Finish(ctx, st);
  FillCounters(MetricsRegistry::Default(), *resp);
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* EdgeAdminService::Drain(
    grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
    v1::DrainResponse* resp) {
  if (auto st = guard_.Check(*ctx); !st.ok()) return Finish(ctx, st);
  if (server_->draining()) {
    return Finish(ctx, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                    "already draining"));
  }
  resp->set_sessions(static_cast<uint32_t>(server_->sessions()));
  const auto grace = std::chrono::milliseconds(req->grace_ms());
  spdlog::info("admin: drain of {} sessions (grace {}ms) asked by {}",
               resp->sessions(), grace.count(), ctx->peer());
  drain_(grace);
  return Finish(ctx, grpc::Status::OK);
}

}  // namespace sinkline::edge
