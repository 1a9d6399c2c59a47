// The sink broker, put together: it owns the thread pools, the tables, the
// spool, the binding store and the submitter, wires them into the session
// stream, the chain engine and the gRPC services, and drains them at
// shutdown. Each job lives in its own file (docs/architecture.md has the
// map).
#pragma once

#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "sink_broker/bindings.h"
#include "sink_broker/chain.h"
#include "sink_broker/config.h"
#include "sink_broker/in_flight.h"
#include "sink_broker/lease.h"
#include "sink_broker/messages.h"
#include "sink_broker/peer_auth.h"
#include "sink_broker/peer_limits.h"
#include "sink_broker/queue_backend.h"
#include "sink_broker/recovery.h"
#include "sink_broker/session_stream.h"
#include "sink_broker/sink_calls.h"
#include "sink_broker/sink_client.h"
#include "sink_broker/spool.h"
#include "sink_broker/spool_space.h"
#include "sink_broker/submission.h"
#include "sinkline/common/grpc_security.h"

namespace sinkline::broker {

class AdminService;

struct BrokerOptions {
  std::string spool_dir;
  // The spool store's memory and log sizes (spool_store.h).
  StoreOptions store;
  std::string broker_id = "broker-1";
  // Content endpoint told to sinks (host:port of this broker).
  std::string advertise;
  // Who may call the Admin service.
  sinkline::AdminGuard admin_guard;
  // Who may open session streams (nobody by default; main.cc reads the
  // flags, in-process tests trust loopback explicitly).
  EdgeGuard edge_guard;
  // Per-peer and per-call limits on the session and content ports.
  PeerLimits peer_limits;
  // The bindings file, reloaded by ReloadFile().
  std::string config_path;
  // Where bindings made through the admin service are kept (YAML).
  std::string admin_state_path;
  // Bound on one event's whole chain before the client's reply, so that no
  // sink holds a client near its RFC 5321 timeouts.
  std::chrono::milliseconds chain_deadline{60000};
  // How far renewals can push a lease (from its grant).
  std::chrono::milliseconds lease_max{600000};
  // Messages up to this size travel inside the EOD event to sinks with
  // content access.
  uint64_t inline_max_bytes = 65536;
  int workers = 4;
  // Threads that hand messages to the queue backend (a relay blocks on the
  // network while it talks to the next hop).
  int submit_workers = 20;
  // Backoff between submission attempts while the backend defers: from the
  // minimum, doubling up to the maximum.
  std::chrono::milliseconds submit_retry_min{1000};
  std::chrono::milliseconds submit_retry_max{300000};
  // A message still deferred this long after COMMIT fails.
  std::chrono::milliseconds max_queue_age{5LL * 24 * 3600 * 1000};
  // The largest original a DSN returns whole under RET=FULL.
  uint64_t dsn_max_return_bytes = 10 * 1024 * 1024;
  // Add a Received: trace header (RFC 5321 §4.4) to every message.
  bool received_header = true;
  // Submitted messages the admin service still shows.
  size_t keep_submitted = 1000;
  // Messages between EOD and their first hand-off to the queue backend
  // (in_flight.h; 0: no limit), and how long an EOD waits for a slot before
  // it is answered 451 4.3.2.
  int64_t max_messages_in_flight = 1000;
  std::chrono::milliseconds in_flight_wait{30000};
  // What one lease may stage (lease.h).
  LeaseLimits lease_limits;
  // Sink calls in flight per binding without its own max_in_flight
  // (sink_calls.h; 0: no limit).
  uint32_t max_sink_calls_in_flight = 256;
  // Below this much free space on the spool's file system MAIL is answered
  // 452 4.3.1 (spool_space.h; 0: not checked).
  uint64_t spool_min_free_bytes = 0;
  // Descriptors held for messages before new transactions are answered
  // 451 4.3.2 (descriptors.h; 0: no limit).
  int64_t max_message_descriptors = 0;
};

class Broker {
 public:
  // `sinks`: how sinks are called (the gRPC invoker when null).
  Broker(BrokerOptions options, Config config,
         std::unique_ptr<QueueBackend> queue,
         std::unique_ptr<SinkInvoker> sinks = nullptr);
  ~Broker();

  // Takes over what a previous run left in the spool (recovery.h).
  RecoveryCounts RecoverSpool();

  BindingStore& bindings() { return bindings_; }
  std::shared_ptr<const Config> config() const { return bindings_.config(); }

  // The gRPC services.
  grpc::Service* session_service();
  // Session streams are refused (UNAVAILABLE) while false: main.cc keeps
  // them out until the spool is recovered.
  void set_accepting_sessions(bool accepting);
  grpc::Service* admin_service();
  grpc::Service* content_service();

  // Set once at start-up, before any session.
  void set_advertise(std::string a) { chain_options_.advertise = std::move(a); }

  // Measures the spool and what operators alert on (spool scans).
  void UpdateGauges();
  // Measures the spool's free space (main.cc does, now and then); edges
  // are told a new binding map when it crosses --spool-min-free-bytes.
  void CheckSpoolSpace() { space_.Check(); }

  // Waits for in-flight work (post-commit chains, submissions) to finish.
  void Drain();

 private:
  // Tells every edge stream the new binding map.
  void Publish(const std::shared_ptr<const Config>& config);
  // The configuration's binding map, with MAIL while the spool is low on
  // space (the broker answers it).
  v1::BindingMap EdgeBindingMap(const Config& config) const;

  const BrokerOptions options_;
  // Before the pools: slots are given back on their threads.
  InFlightLimit in_flight_;
  SinkCallLimits sink_calls_;
  boost::asio::thread_pool pool_;
  MessageTable messages_;
  const Spool spool_;
  SpoolSpace space_;
  std::unique_ptr<QueueBackend> queue_;
  std::unique_ptr<SinkInvoker> sinks_;
  LeaseTable leases_;
  ChainOptions chain_options_;
  SessionHub hub_;
  BindingStore bindings_;
  Submitter submitter_;
  SessionGate session_gate_;
  SessionEnv session_env_;
  std::unique_ptr<SessionService> session_service_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Service> content_service_;
};

}  // namespace sinkline::broker
