// The edge's side of the session stream: one gRPC bidirectional stream per
// SMTP session, over one shared channel (load-balanced over every broker the
// target resolves to). Callbacks arrive on gRPC threads; the connection
// posts them to its own executor.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "sinkline/v1/session.grpc.pb.h"

namespace sinkline::edge {

// Creates the shared channel to the brokers.
std::shared_ptr<grpc::Channel> MakeBrokerChannel(const std::string& target);

// The token every session stream presents to the broker as
// `authorization: Bearer <token>` (--broker-token-file; set once at start,
// before any session). Empty: none sent.
void SetBrokerToken(std::string token);
// Reads it from `path` (surrounding whitespace stripped; at least 16
// characters).
absl::Status LoadBrokerToken(const std::string& path);

class BrokerStream
    : public grpc::ClientBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  struct Handler {
    // A response from the broker.
    std::function<void(v1::SessionResponse)> on_response;
    // A queued write went out (the outbound queue shrank).
    std::function<void()> on_writable;
    // The stream ended (broken, refused, or closed); called once.
    std::function<void(grpc::Status)> on_done;
  };

  // Starts the stream; the returned object lives until the stream is done
  // and the caller dropped it.
  static std::shared_ptr<BrokerStream> Open(v1::SessionService::Stub* stub,
                                            Handler handler);

  // Streams not yet released by gRPC and their owners. The process waits
  // for none before it exits: gRPC must not finish a call while the process
  // tears down what the call touches.
  static int Live() { return LiveCount::n.load(); }

  void Send(v1::SessionRequest req);
  // No more requests: half-close once the queue drained.
  void Close();
  // Abandon the stream now.
  void Cancel();
  size_t queued() const;

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnWritesDoneDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  explicit BrokerStream(Handler h) : handler_(std::move(h)) {}
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the hold taken at Open (once): no write starts from outside the
  // reactions after it, and gRPC may finish the call and call OnDone.
  void ReleaseHold() ABSL_LOCKS_EXCLUDED(mu_);

  struct LiveCount {
    LiveCount() { ++n; }
    ~LiveCount() { --n; }
    static inline std::atomic<int> n{0};
  };
  // First member: counted until every other member is gone.
  LiveCount live_;
  Handler handler_;
  grpc::ClientContext context_;
  v1::SessionResponse response_;
  mutable absl::Mutex mu_;
  std::deque<v1::SessionRequest> out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  // Keeps this object alive until OnDone.
  std::shared_ptr<BrokerStream> self_;
};

}  // namespace sinkline::edge
