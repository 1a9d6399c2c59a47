// The sink broker: serves the edge's session streams, runs each event's
// chain of sinks in priority order around the native handler (COMMIT on
// EOD), spools content, and submits committed messages to the queue backend
// once their chain is over.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "config.h"
#include "lease.h"
#include "messages.h"
#include "operator_actions.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/v1/admin.grpc.pb.h"
#include "sinkline/v1/content.grpc.pb.h"
#include "sinkline/v1/session.grpc.pb.h"
#include "sinkline/v1/sink.grpc.pb.h"
#include "spool.h"

namespace sinkline::broker {

struct BrokerOptions {
  std::string spool_dir;
  std::string broker_id = "broker-1";
  // Content endpoint told to sinks (host:port of this broker).
  std::string advertise;
  // Who may call the Admin service.
  sinkline::AdminGuard admin_guard;
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
  int submit_workers = 2;
  // Backoff between submission attempts while the backend defers: from the
  // minimum, doubling up to the maximum.
  std::chrono::milliseconds submit_retry_min{1000};
  std::chrono::milliseconds submit_retry_max{300000};
  // A message still deferred this long after COMMIT fails.
  std::chrono::milliseconds max_queue_age{5LL * 24 * 3600 * 1000};
  // Add a Received: trace header (RFC 5321 §4.4) to every message.
  bool received_header = true;
  // Submitted messages the admin service still shows.
  size_t keep_submitted = 1000;
};

class SessionState;

// Channels to sinks, one per target, created once and reused.
class SinkChannels {
 public:
  std::shared_ptr<v1::Sink::Stub> Stub(const std::string& target);

 private:
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<v1::Sink::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);
};

class Broker {
 public:
  Broker(BrokerOptions options, Config config,
         std::unique_ptr<QueueBackend> queue);
  ~Broker();

  // Submits messages a previous run committed but did not submit.
  void RecoverSpool();
  // Removes what a COMMIT or a write cut short by a crash left behind.
  void RemovePartialCommits();

  // Loads the admin service's bindings kept from an earlier run.
  absl::Status LoadAdminState();
  // Re-reads the bindings file; a file with any error is refused whole and
  // the running configuration stays.
  absl::Status ReloadFile();
  // Installs a parsed bindings file (merged with the admin bindings).
  absl::Status SetFileConfig(Config file);

  // The admin service's binding changes, persisted before they apply.
  absl::StatusOr<v1::Binding> CreateBinding(const v1::Binding& binding);
  absl::StatusOr<v1::Binding> UpdateBinding(const v1::Binding& binding);
  absl::Status DeleteBinding(const std::string& name);
  absl::StatusOr<v1::Binding> SetBindingEnabled(const std::string& name,
                                                bool enabled);
  std::shared_ptr<const Config> config() const;

  // The gRPC services.
  grpc::Service* session_service();
  grpc::Service* admin_service();
  grpc::Service* content_service();

  // An operator lets a held, quarantined or failed message go on to the
  // queue backend.
  absl::StatusOr<v1::MessageInfo> ReleaseMessage(const std::string& queue_id);
  // One message with its leases; NOT_FOUND when the broker does not know it.
  absl::StatusOr<v1::MessageInfo> GetMessage(const std::string& queue_id);

  // Waits for in-flight work (post-commit chains, submissions) to finish.
  void Drain();

  // Internal, used by sessions and chains.
  const BrokerOptions& options() const { return options_; }
  // Set once at start-up, before any session.
  void set_advertise(std::string a) { options_.advertise = std::move(a); }
  boost::asio::thread_pool& pool() { return pool_; }
  boost::asio::thread_pool& submit_pool() { return submit_pool_; }
  MessageTable& messages() { return messages_; }
  OperatorActions& operator_actions() { return operator_actions_; }
  // Deferred submissions wait on these timers; Drain() cancels them and the
  // messages stay in the spool for the next start. False once draining.
  bool AddRetryTimer(const std::shared_ptr<boost::asio::steady_timer>& t);
  void RemoveRetryTimer(boost::asio::steady_timer* t);
  SinkChannels& channels() { return channels_; }
  LeaseTable& leases() { return *leases_; }
  QueueBackend& queue() { return *queue_; }
  void Register(const std::shared_ptr<SessionState>& s);
  void Unregister(SessionState* s);

 private:
  class SessionServiceImpl;
  class AdminServiceImpl;
  class ContentServiceImpl;

  BrokerOptions options_;
  boost::asio::thread_pool pool_;
  boost::asio::thread_pool submit_pool_;
  MessageTable messages_;
  absl::Mutex release_mu_;       // one operator release of a message at a time
  friend class OperatorActions;  // holds and deletes take release_mu_ too
  OperatorActions operator_actions_;
  absl::Mutex retry_mu_;
  bool draining_ ABSL_GUARDED_BY(retry_mu_) = false;
  std::map<boost::asio::steady_timer*, std::weak_ptr<boost::asio::steady_timer>>
      retry_timers_ ABSL_GUARDED_BY(retry_mu_);
  SinkChannels channels_;
  std::unique_ptr<QueueBackend> queue_;
  std::unique_ptr<LeaseTable> leases_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Config> config_ ABSL_GUARDED_BY(mu_);
  std::map<SessionState*, std::weak_ptr<SessionState>> sessions_
      ABSL_GUARDED_BY(mu_);
  // Swaps in a new effective configuration and tells every edge stream.
  void SetConfig(Config config);
  // Validates an admin binding against the file's sinks.
  absl::StatusOr<BindingConfig> CheckAdminBinding(const v1::Binding& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // Persists `next` and, when the merge works, makes it the admin bindings.
  absl::Status CommitAdmin(std::vector<BindingConfig> next)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);

  // Serialises configuration changes (file reloads and admin calls).
  absl::Mutex admin_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  Config file_config_ ABSL_GUARDED_BY(admin_mu_);
  std::vector<BindingConfig> admin_bindings_ ABSL_GUARDED_BY(admin_mu_);
  std::unique_ptr<SessionServiceImpl> session_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<ContentServiceImpl> content_service_;
};

// Checks a sink's verdict against the event and the binding. An invalid
// verdict is a sink failure.
absl::Status ValidateVerdict(const v1::Event& event, const v1::Binding& binding,
                             bool after_commit, const v1::Verdict& verdict);

// Checks a reply a sink gives: code class 2/4/5, enhanced code of the same
// class, text without CR or LF.
absl::Status ValidateReply(const v1::Reply& reply);

}  // namespace sinkline::broker
