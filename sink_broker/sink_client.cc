#include "sink_broker/sink_client.h"

#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "google/protobuf/util/time_util.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/common/grpc_status.h"

namespace sinkline::broker {

namespace {

using google::protobuf::util::TimeUtil;

google::protobuf::Timestamp Stamp(std::chrono::system_clock::time_point t) {
  return TimeUtil::MillisecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          t.time_since_epoch())
          .count());
}

// One call in flight: what gRPC needs to outlive it.
struct Call {
  grpc::ClientContext context;
  std::shared_ptr<const v1::SinkRequest> request;
  v1::Verdict verdict;
  SinkInvoker::Done done;
};

}  // namespace

std::shared_ptr<v1::Sink::Stub> GrpcSinkInvoker::Stub(
    const std::string& target) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[target];
  if (!stub) {
    grpc::ChannelArguments args;
    // Spread calls over every address the target resolves to.
    args.SetServiceConfigJSON(
        R"({"loadBalancingConfig":[{"round_robin":{}}]})");
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
    // A sink that restarts is found again quickly.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    sinkline::AddGrpcTlsChannelArgs(args);
    stub = v1::Sink::NewStub(grpc::CreateCustomChannel(
        target, sinkline::GrpcChannelCredentials(), args));
  }
  return stub;
}

void GrpcSinkInvoker::Invoke(const SinkConfig& sink,
                             std::shared_ptr<const v1::SinkRequest> request,
                             std::chrono::system_clock::time_point deadline,
                             Done done) {
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->done = std::move(done);
  call->context.set_deadline(deadline);
  Stub(sink.target)
      ->async()
      ->OnEvent(&call->context, call->request.get(), &call->verdict,
                [call](grpc::Status status) {
                  if (!status.ok()) return call->done(FromGrpc(status));
                  call->done(std::move(call->verdict));
                });
}

v1::SinkRequest MakeSinkRequest(const v1::Event& event,
                                const v1::Envelope& envelope,
                                const v1::Binding& binding, bool after_commit,
                                bool redelivery) {
  v1::SinkRequest req;
  *req.mutable_event() = event;
  *req.mutable_event()->mutable_envelope() = envelope;
  req.set_binding(binding.name());
  req.set_priority(binding.priority());
  req.set_after_commit(after_commit);
  req.set_redelivery(redelivery);
  return req;
}

void AttachLease(const Lease& lease, const std::string& content_endpoint,
                 uint64_t inline_max_bytes, v1::SinkRequest& request) {
  v1::Lease* out = request.mutable_lease();
  out->set_token(lease.token);
  *out->mutable_expires() = Stamp(lease.expires);
  *out->mutable_max_expires() = Stamp(lease.max_expires);
  out->set_access(lease.access);
  out->set_content_endpoint(content_endpoint);
  const std::string path = lease.message->path();
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size <= inline_max_bytes) {
    request.set_inline_content(ReadWholeFile(path));
    request.set_content_inline(true);
  }
}

}  // namespace sinkline::broker
