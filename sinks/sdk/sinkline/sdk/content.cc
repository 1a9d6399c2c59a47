#include "sinkline/sdk/content.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/common/grpc_status.h"

namespace sinkline::sdk {

namespace {

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(timeout));
}

}  // namespace

void AddClaim(grpc::ClientContext& context, const ClaimedLease& lease) {
  if (!lease.queue_id.empty()) {
    context.AddMetadata("sinkline-queue-id", lease.queue_id);
  }
  if (!lease.binding.empty()) {
    context.AddMetadata("sinkline-binding", lease.binding);
  }
}

ContentClient& ContentClient::Default() {
  static auto* client = new ContentClient();
  return *client;
}

std::shared_ptr<v1::Content::Stub> ContentClient::Stub(
    const std::string& endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& stub = stubs_[endpoint];
  if (!stub) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    // The same TLS as every channel of the control plane.
    AddGrpcTlsChannelArgs(args);
    stub = v1::Content::NewStub(
        grpc::CreateCustomChannel(endpoint, GrpcChannelCredentials(), args));
  }
  return stub;
}

absl::Status ContentClient::Read(
    const ClaimedLease& claimed,
    const std::function<absl::Status(absl::string_view)>& chunk,
    absl::Duration timeout) {
  const v1::Lease& lease = claimed.lease;
  if (lease.token().empty() || lease.content_endpoint().empty()) {
    return absl::FailedPreconditionError("no lease with a content endpoint");
  }
  auto stub = Stub(lease.content_endpoint());
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  AddClaim(context, claimed);
  v1::ReadRangeRequest request;
  request.set_token(lease.token());
  auto reader = stub->ReadRange(&context, request);
  v1::ReadRangeResponse response;
  uint64_t next = 0;
  absl::Status failed;
  while (reader->Read(&response)) {
    if (!failed.ok()) continue;
    if (response.offset() != next) {
      failed = absl::DataLossError(absl::StrCat(
          "content chunk at ", response.offset(), ", expected ", next));
      context.TryCancel();
      continue;
    }
    next += response.data().size();
    failed = chunk(response.data());
    if (!failed.ok()) context.TryCancel();
  }
  const grpc::Status status = reader->Finish();
  if (!failed.ok()) return failed;
  if (!status.ok()) return FromGrpc(status);
  if (next != response.total_size() && next != 0) {
    return absl::DataLossError(
        absl::StrCat("read ", next, " of ", response.total_size(), " octets"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ContentClient::ReadAll(const ClaimedLease& claimed,
                                                   absl::Duration timeout) {
  std::string message;
  absl::Status status = Read(
      claimed,
      [&message](absl::string_view data) {
        message.append(data.data(), data.size());
        return absl::OkStatus();
      },
      timeout);
  if (!status.ok()) return status;
  return message;
}

absl::Status ContentClient::Release(const ClaimedLease& claimed, bool discard,
                                    absl::Duration timeout) {
  const v1::Lease& lease = claimed.lease;
  auto stub = Stub(lease.content_endpoint());
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  AddClaim(context, claimed);
  v1::ReleaseRequest request;
  request.set_token(lease.token());
  request.set_discard(discard);
  v1::ReleaseResponse response;
  return FromGrpc(stub->Release(&context, request, &response));
}

absl::Status ContentClient::Renew(const ClaimedLease& claimed,
                                  absl::Duration extend,
                                  absl::Duration timeout) {
  const v1::Lease& lease = claimed.lease;
  auto stub = Stub(lease.content_endpoint());
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  AddClaim(context, claimed);
  v1::RenewRequest request;
  request.set_token(lease.token());
  request.set_extend_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(extend)));
  v1::RenewResponse response;
  return FromGrpc(stub->Renew(&context, request, &response));
}

absl::StatusOr<std::string> ReadMessage(const EventContext& ctx) {
  if (const std::string* inline_content = ctx.inline_content()) {
    return *inline_content;
  }
  return ContentClient::Default().ReadAll(ClaimedLease(ctx));
}

}  // namespace sinkline::sdk
