#include "sink_broker/admin_service.h"

#include <spdlog/spdlog.h>

#include <map>

#include "sinkline/common/counters.h"
#include "sinkline/common/grpc_status.h"

namespace sinkline::broker {

namespace {

grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx,
                                 const absl::Status& st) {
  auto* r = ctx->DefaultReactor();
  r->Finish(ToGrpc(st));
  return r;
}

grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx,
                                 const grpc::Status& st) {
  spdlog::warn("admin call from {} refused: {}", ctx->peer(),
               st.error_message());
  auto* r = ctx->DefaultReactor();
  r->Finish(st);
  return r;
}

// A result into the response; its status for the call.
template <typename T, typename Out>
absl::Status Fill(absl::StatusOr<T> result, Out* out) {
  if (result.ok()) *out = std::move(*result);
  return result.status();
}

}  // namespace

// The operator's credential first, then the call. An edge's credential is
// never an operator's, whatever trust loopback gets.
template <typename Body>
grpc::ServerUnaryReactor* AdminService::Guarded(
    grpc::CallbackServerContext* ctx, Body body) {
  if (edges_ != nullptr &&
      edges_->PresentsEdgeCredential(PeerCredentials::From(*ctx))) {
    CountPeerRefused("admin", grpc::StatusCode::PERMISSION_DENIED);
    return Refuse(ctx, grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                                    "an edge's credential is not an "
                                    "operator's: Admin refused"));
  }
  if (auto st = guard_.Check(*ctx); !st.ok()) {
    CountPeerRefused("admin", st.error_code());
    return Refuse(ctx, st);
  }
  return Finish(ctx, body());
}

absl::StatusOr<v1::MessageInfo> MessageWithLeases(const MessageTable& messages,
                                                  LeaseTable& leases,
                                                  const std::string& queue_id) {
  auto m = messages.Get(queue_id);
  if (!m || queue_id.empty()) {
    return absl::NotFoundError("no message with queue id " + queue_id);
  }
  for (auto& l : leases.List()) {
    if (l.queue_id() == queue_id) *m->add_leases() = std::move(l);
  }
  return *m;
}

grpc::ServerUnaryReactor* AdminService::ListSinks(
    grpc::CallbackServerContext* ctx, const v1::ListSinksRequest*,
    v1::ListSinksResponse* resp) {
  return Guarded(ctx, [&] {
    for (const auto& s : bindings_.config()->sinks) {
      auto* out = resp->add_sinks();
      out->set_name(s.name);
      out->set_target(s.target);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::ListBindings(
    grpc::CallbackServerContext* ctx, const v1::ListBindingsRequest*,
    v1::ListBindingsResponse* resp) {
  return Guarded(ctx, [&] {
    for (const auto& b : bindings_.config()->bindings) {
      *resp->add_bindings() = b.spec;
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::CreateBinding(
    grpc::CallbackServerContext* ctx, const v1::CreateBindingRequest* req,
    v1::BindingResponse* resp) {
  return Guarded(ctx, [&] {
    return Fill(bindings_.Create(req->binding()), resp->mutable_binding());
  });
}

grpc::ServerUnaryReactor* AdminService::UpdateBinding(
    grpc::CallbackServerContext* ctx, const v1::UpdateBindingRequest* req,
    v1::BindingResponse* resp) {
  return Guarded(ctx, [&] {
    return Fill(bindings_.Update(req->binding()), resp->mutable_binding());
  });
}

grpc::ServerUnaryReactor* AdminService::EnableBinding(
    grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
    v1::BindingResponse* resp) {
  return Guarded(ctx, [&] {
    return Fill(bindings_.SetEnabled(req->name(), true),
                resp->mutable_binding());
  });
}

grpc::ServerUnaryReactor* AdminService::DisableBinding(
    grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
    v1::BindingResponse* resp) {
  return Guarded(ctx, [&] {
    return Fill(bindings_.SetEnabled(req->name(), false),
                resp->mutable_binding());
  });
}

grpc::ServerUnaryReactor* AdminService::DeleteBinding(
    grpc::CallbackServerContext* ctx, const v1::DeleteBindingRequest* req,
    v1::DeleteBindingResponse*) {
  return Guarded(ctx, [&] { return bindings_.Delete(req->name()); });
}

grpc::ServerUnaryReactor* AdminService::ListLeases(
    grpc::CallbackServerContext* ctx, const v1::ListLeasesRequest*,
    v1::ListLeasesResponse* resp) {
  return Guarded(ctx, [&] {
    for (auto& l : leases_.List()) *resp->add_leases() = l;
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::ListMessages(
    grpc::CallbackServerContext* ctx, const v1::ListMessagesRequest* req,
    v1::ListMessagesResponse* resp) {
  return Guarded(ctx, [&] {
    std::multimap<std::string, v1::LeaseInfo> leases;
    for (auto& l : leases_.List()) leases.emplace(l.queue_id(), l);
    for (auto& m : messages_.List(req->state())) {
      auto [from, to] = leases.equal_range(m.queue_id());
      for (auto it = from; it != to && !m.queue_id().empty(); ++it) {
        *m.add_leases() = it->second;
      }
      *resp->add_messages() = std::move(m);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::GetMessage(
    grpc::CallbackServerContext* ctx, const v1::GetMessageRequest* req,
    v1::MessageInfo* resp) {
  return Guarded(ctx, [&] {
    return Fill(MessageWithLeases(messages_, leases_, req->queue_id()), resp);
  });
}

grpc::ServerUnaryReactor* AdminService::ReleaseMessage(
    grpc::CallbackServerContext* ctx, const v1::ReleaseMessageRequest* req,
    v1::MessageInfo* resp) {
  return Guarded(ctx, [&] {
    absl::Status shown;
    auto st = submitter_.Release(req->queue_id(), [&] {
      shown =
          Fill(MessageWithLeases(messages_, leases_, req->queue_id()), resp);
    });
    return st.ok() ? shown : st;
  });
}

grpc::ServerUnaryReactor* AdminService::HoldMessage(
    grpc::CallbackServerContext* ctx, const v1::HoldMessageRequest* req,
    v1::MessageInfo* resp) {
  return Guarded(ctx, [&] {
    auto st =
        submitter_.operator_actions().Hold(req->queue_id(), req->reason());
    if (!st.ok()) return st;
    return Fill(MessageWithLeases(messages_, leases_, req->queue_id()), resp);
  });
}

grpc::ServerUnaryReactor* AdminService::DeleteMessage(
    grpc::CallbackServerContext* ctx, const v1::DeleteMessageRequest* req,
    v1::MessageInfo* resp) {
  return Guarded(ctx, [&] {
    auto st = submitter_.operator_actions().Delete(req->queue_id());
    if (!st.ok()) return st;
    return Fill(MessageWithLeases(messages_, leases_, req->queue_id()), resp);
  });
}

grpc::ServerUnaryReactor* AdminService::ReadMessage(
    grpc::CallbackServerContext* ctx, const v1::ReadMessageRequest* req,
    v1::ReadMessageResponse* resp) {
  return Guarded(ctx, [&] {
    return Fill(submitter_.operator_actions().Read(*req), resp);
  });
}

grpc::ServerUnaryReactor* AdminService::GetCounters(
    grpc::CallbackServerContext* ctx, const v1::GetCountersRequest*,
    v1::GetCountersResponse* resp) {
  return Guarded(ctx, [&] {
    FillCounters(MetricsRegistry::Default(), *resp);
    return absl::OkStatus();
  });
}

}  // namespace sinkline::broker
