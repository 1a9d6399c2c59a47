// One edge session stream: the gRPC reactor, the session's state on its
// strand, the DATA chunks written to the arriving message, each event's
// chain, and EOD through COMMIT (commit.h) to the submitter.
#pragma once

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "sink_broker/chain.h"
#include "sink_broker/commit.h"
#include "sink_broker/config.h"
#include "sink_broker/descriptors.h"
#include "sink_broker/in_flight.h"
#include "sink_broker/messages.h"
#include "sink_broker/peer_auth.h"
#include "sink_broker/spool_space.h"
#include "sink_broker/submission.h"
#include "sinkline/v1/session.grpc.pb.h"

namespace sinkline::broker {

class SessionState;

// Every live session stream, so that a new binding map reaches them all.
class SessionHub {
 public:
  void Register(const std::shared_ptr<SessionState>& s);
  void Unregister(SessionState* s);
  // Sends `map` to every live stream; returns how many.
  size_t Broadcast(const v1::BindingMap& map);

 private:
  absl::Mutex mu_;
  std::map<SessionState*, std::weak_ptr<SessionState>> sessions_
      ABSL_GUARDED_BY(mu_);
};

struct SessionEnv {
  boost::asio::thread_pool* pool = nullptr;  // strands for each session
  std::function<std::shared_ptr<const Config>()> config;
  ChainEnv chain;
  CommitContext commit;
  Submitter* submitter = nullptr;
  // Bounds messages in flight (nullptr: no bound).
  InFlightLimit* in_flight = nullptr;
  SessionHub* hub = nullptr;
  // Who may open a stream (null: everyone; unit tests).
  SessionGate* gate = nullptr;
  // The spool's free space (null: not checked): MAIL and a transaction's
  // content are refused 452 4.3.1 while it is low.
  SpoolSpace* space = nullptr;
  // Descriptors for messages (null: not bounded): a transaction's content
  // is refused 451 4.3.2 at the limit.
  MessageDescriptors* descriptors = nullptr;
  // The binding map told to edges (null: the configuration's).
  std::function<v1::BindingMap()> binding_map;
  // Add a Received: trace header (RFC 5321 §4.4) to every message.
  bool received_header = true;
};

class SessionService final : public v1::SessionService::CallbackService {
 public:
  explicit SessionService(const SessionEnv* env) : env_(env) {}
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Stream(
      grpc::CallbackServerContext* context) override;

  // While false (the spool being recovered at start), streams are refused
  // with UNAVAILABLE and the edge tries again later.
  void set_accepting(bool accepting) { accepting_.store(accepting); }

 private:
  const SessionEnv* const env_;
  std::atomic<bool> accepting_{true};
};

}  // namespace sinkline::broker
