// Calls to the broker's Content service for sinks that read a message or
// finish their work after the verdict ("hold the lease and finish later"):
//
//   void OnEod(sdk::EventContext& ctx) override {
//     ctx.HoldLease();
//     pool.Post([lease = sdk::ClaimedLease(ctx)] {
//       auto message = sdk::ContentClient::Default().ReadAll(lease);
//       ...
//       sdk::ContentClient::Default().Release(lease);
//     });
//   }
//
// Every call names the message and binding of the invocation the lease came
// with (metadata sinkline-queue-id and sinkline-binding, docs/sdk.md): the
// broker refuses, with PERMISSION_DENIED, a token of another message or
// binding, so a sink that mixes up its leases fails loudly instead of
// touching another message.
//
// The client keeps one channel per content endpoint (a lease names the
// broker that holds its message) and is safe to use from any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sinkline/common/grpc_status.h"
#include "sinkline/sdk/sink.h"
#include "sinkline/v1/content.grpc.pb.h"

namespace sinkline::sdk {

// gRPC status → absl::Status, same code and message (one mapping for every
// process).
using sinkline::FromGrpc;

// A lease with the message and binding its invocation named.
struct ClaimedLease {
  // A bare lease claims nothing (the broker checks the token alone).
  ClaimedLease(const v1::Lease& l) : lease(l) {}  // NOLINT: implicit
  explicit ClaimedLease(const v1::SinkRequest& request)
      : lease(request.lease()),
        queue_id(request.event().queue_id()),
        binding(request.binding()) {}
  explicit ClaimedLease(const EventContext& ctx)
      : ClaimedLease(ctx.request()) {}

  v1::Lease lease;
  std::string queue_id;
  std::string binding;
};

// Names the claim in a call's metadata (for sinks that call Stub()
// themselves).
void AddClaim(grpc::ClientContext& context, const ClaimedLease& lease);

class ContentClient {
 public:
  // The process-wide client.
  static ContentClient& Default();

  // Streams the whole message in the lease's version to `chunk`, in order;
  // a chunk callback that fails stops the read with its status.
  absl::Status Read(const ClaimedLease& lease,
                    const std::function<absl::Status(absl::string_view)>& chunk,
                    absl::Duration timeout = absl::Seconds(60));
  // The whole message in memory.
  absl::StatusOr<std::string> ReadAll(
      const ClaimedLease& lease, absl::Duration timeout = absl::Seconds(60));
  // Ends the lease (staged writes published unless `discard`).
  absl::Status Release(const ClaimedLease& lease, bool discard = false,
                       absl::Duration timeout = absl::Seconds(10));
  // Pushes the lease's expiry out by `extend`.
  absl::Status Renew(const ClaimedLease& lease, absl::Duration extend,
                     absl::Duration timeout = absl::Seconds(10));

  // The stub for an endpoint ("host:port"); created on first use.
  std::shared_ptr<v1::Content::Stub> Stub(const std::string& endpoint);

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<v1::Content::Stub>> stubs_;
};

// The whole message of an EOD invocation: the inline content when the broker
// sent it, else read through the Content service with the lease.
absl::StatusOr<std::string> ReadMessage(const EventContext& ctx);

}  // namespace sinkline::sdk
