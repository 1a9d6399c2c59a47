// Calling sinks. The chain engine sees only SinkInvoker: one request in,
// one verdict (or why there is none) out. GrpcSinkInvoker is the real one:
// one channel per sink target, created once and reused, with keepalive and
// client-side load balancing over the target's addresses.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/config.h"
#include "sink_broker/lease.h"
#include "sinkline/v1/sink.grpc.pb.h"

namespace sinkline::broker {

class SinkInvoker {
 public:
  // Runs once, on any thread: the sink's verdict, or why there is none.
  using Done = std::function<void(absl::StatusOr<v1::Verdict>)>;
  virtual ~SinkInvoker() = default;
  virtual void Invoke(const SinkConfig& sink,
                      std::shared_ptr<const v1::SinkRequest> request,
                      std::chrono::system_clock::time_point deadline,
                      Done done) = 0;
};

class GrpcSinkInvoker : public SinkInvoker {
 public:
  void Invoke(const SinkConfig& sink,
              std::shared_ptr<const v1::SinkRequest> request,
              std::chrono::system_clock::time_point deadline,
              Done done) override;

 private:
  std::shared_ptr<v1::Sink::Stub> Stub(const std::string& target);
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<v1::Sink::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);
};

// The request one binding gets for one event: the event with the envelope
// as it stands, and who is asking.
v1::SinkRequest MakeSinkRequest(const v1::Event& event,
                                const v1::Envelope& envelope,
                                const v1::Binding& binding, bool after_commit,
                                bool redelivery);

// Puts a granted lease into the request: its token, expiries, access, where
// the content service is, and the content itself when it is small.
void AttachLease(const Lease& lease, const std::string& content_endpoint,
                 uint64_t inline_max_bytes, v1::SinkRequest& request);

}  // namespace sinkline::broker
