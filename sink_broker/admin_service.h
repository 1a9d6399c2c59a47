// The Admin service: a thin gRPC adapter over the binding store, the lease
// and message tables and the submitter. Every call checks the operator's
// credential first.
#pragma once

#include "absl/status/statusor.h"
#include "sink_broker/bindings.h"
#include "sink_broker/lease.h"
#include "sink_broker/messages.h"
#include "sink_broker/peer_auth.h"
#include "sink_broker/submission.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/v1/admin.grpc.pb.h"

namespace sinkline::broker {

// One message with its leases; NOT_FOUND when the broker does not know it.
absl::StatusOr<v1::MessageInfo> MessageWithLeases(const MessageTable& messages,
                                                  LeaseTable& leases,
                                                  const std::string& queue_id);

class AdminService final : public v1::Admin::CallbackService {
 public:
  // `edges`: the edges' credential, refused here (null: none).
  AdminService(const AdminGuard& guard, BindingStore& bindings,
               LeaseTable& leases, MessageTable& messages, Submitter& submitter,
               const EdgeGuard* edges = nullptr)
      : guard_(guard),
        edges_(edges),
        bindings_(bindings),
        leases_(leases),
        messages_(messages),
        submitter_(submitter) {}

  grpc::ServerUnaryReactor* ListSinks(grpc::CallbackServerContext* ctx,
                                      const v1::ListSinksRequest*,
                                      v1::ListSinksResponse* resp) override;
  grpc::ServerUnaryReactor* ListBindings(
      grpc::CallbackServerContext* ctx, const v1::ListBindingsRequest*,
      v1::ListBindingsResponse* resp) override;
  grpc::ServerUnaryReactor* CreateBinding(grpc::CallbackServerContext* ctx,
                                          const v1::CreateBindingRequest* req,
                                          v1::BindingResponse* resp) override;
  grpc::ServerUnaryReactor* UpdateBinding(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateBindingRequest* req,
                                          v1::BindingResponse* resp) override;
  grpc::ServerUnaryReactor* EnableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override;
  grpc::ServerUnaryReactor* DisableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteBinding(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteBindingRequest* req,
                                          v1::DeleteBindingResponse*) override;
  grpc::ServerUnaryReactor* ListLeases(grpc::CallbackServerContext* ctx,
                                       const v1::ListLeasesRequest*,
                                       v1::ListLeasesResponse* resp) override;
  grpc::ServerUnaryReactor* ListMessages(
      grpc::CallbackServerContext* ctx, const v1::ListMessagesRequest* req,
      v1::ListMessagesResponse* resp) override;
  grpc::ServerUnaryReactor* GetMessage(grpc::CallbackServerContext* ctx,
                                       const v1::GetMessageRequest* req,
                                       v1::MessageInfo* resp) override;
  grpc::ServerUnaryReactor* ReleaseMessage(grpc::CallbackServerContext* ctx,
                                           const v1::ReleaseMessageRequest* req,
                                           v1::MessageInfo* resp) override;
  grpc::ServerUnaryReactor* HoldMessage(grpc::CallbackServerContext* ctx,
                                        const v1::HoldMessageRequest* req,
                                        v1::MessageInfo* resp) override;
  grpc::ServerUnaryReactor* DeleteMessage(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteMessageRequest* req,
                                          v1::MessageInfo* resp) override;
  grpc::ServerUnaryReactor* ReadMessage(grpc::CallbackServerContext* ctx,
                                        const v1::ReadMessageRequest* req,
                                        v1::ReadMessageResponse* resp) override;
  grpc::ServerUnaryReactor* GetCounters(grpc::CallbackServerContext* ctx,
                                        const v1::GetCountersRequest*,
                                        v1::GetCountersResponse* resp) override;

 private:
  template <typename Body>
  grpc::ServerUnaryReactor* Guarded(grpc::CallbackServerContext* ctx,
                                    Body body);

  const AdminGuard& guard_;
  const EdgeGuard* const edges_;
  BindingStore& bindings_;
  LeaseTable& leases_;
  MessageTable& messages_;
  Submitter& submitter_;
};

}  // namespace sinkline::broker
