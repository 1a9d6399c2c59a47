// The chain engine: one event through its bindings in priority order, the
// native handler at 24575 between those before it and those after it.
// ChainRun knows nothing of gRPC or the spool: it calls sinks through a
// SinkInvoker, grants leases from a LeaseTable, notes what happened in the
// MessageTable, and reports a post-COMMIT binding that finished through a
// callback (the spool keeps that record).
#pragma once

#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sink_broker/config.h"
#include "sink_broker/lease.h"
#include "sink_broker/messages.h"
#include "sink_broker/sink_calls.h"
#include "sink_broker/sink_client.h"

namespace sinkline::broker {

using Strand = boost::asio::strand<boost::asio::thread_pool::executor_type>;

struct ChainOptions {
  // Bound on one event's whole chain before the client's reply, so that no
  // sink holds a client near its RFC 5321 timeouts.
  std::chrono::milliseconds chain_deadline{60000};
  // How far renewals can push a lease (from its grant).
  std::chrono::milliseconds lease_max{600000};
  // Messages up to this size travel inside the EOD event to sinks with
  // content access.
  uint64_t inline_max_bytes = 65536;
  // Content endpoint told to sinks (host:port of this broker).
  std::string advertise;
};

// What a chain uses of the rest of the broker.
struct ChainEnv {
  SinkInvoker* sinks = nullptr;
  LeaseTable* leases = nullptr;
  MessageTable* messages = nullptr;
  const ChainOptions* options = nullptr;
  // Bounds sink calls in flight per binding (nullptr: no bound; the calls
  // are still counted).
  SinkCallLimits* call_limits = nullptr;
  // A binding after COMMIT finished with a message (made durable so that a
  // restart does not run it again).
  std::function<void(const std::string& queue_id, const std::string& binding)>
      finished;
  // A sink after COMMIT refused the message (or failed under a tempfail or
  // reject policy): the quarantine is made durable here, at the verdict and
  // before the binding counts as finished, so that a restart in between
  // keeps the message quarantined instead of submitting it.
  std::function<void(const std::string& queue_id, const std::string& reason)>
      quarantined;
  // A lease after COMMIT ended with the envelope edited: the envelope is
  // made durable before the binding counts as finished, so that a restart
  // in between runs the binding again instead of keeping its content edits
  // without its envelope edits. Not OK: the binding is not marked finished.
  std::function<absl::Status(const std::string& queue_id,
                             const v1::Envelope& envelope)>
      envelope_published;
};

// What the native handler did.
enum class NativeResult { kReply, kStop };

class ChainRun : public std::enable_shared_from_this<ChainRun> {
 public:
  using Done = std::function<void(ChainRun&)>;

  ChainRun(ChainEnv env, Strand strand, std::shared_ptr<const Config> config,
           v1::Event event);

  // For EOD: the message, so sinks with content access get leases (and the
  // content inline) and their edits go through them.
  std::shared_ptr<MessageRecord> message;

  // Recovery after a restart: only the bindings after COMMIT that had not
  // finished run, and sinks are told it is a redelivery.
  void RecoverAfterCommit(const std::set<std::string>& finished);

  // Runs the bindings before the native handler, then `native`, then
  // `after_native` with the result so far (the reply goes out there for
  // EOD), then the bindings after it, then `done`. Everything runs on the
  // strand.
  void Run(std::function<NativeResult(ChainRun&)> native,
           std::function<void(ChainRun&)> after_native, Done done);

  const v1::Event& event() const { return event_; }
  v1::Event& mutable_event() { return event_; }
  const v1::Reply& reply() const { return reply_; }
  void set_reply(v1::Reply r) { reply_ = std::move(r); }
  bool close_session() const { return close_; }
  bool consumed() const { return consumed_; }
  bool sink_replied() const { return sink_replied_; }
  const v1::Envelope& envelope() const { return envelope_; }
  bool envelope_changed() const { return envelope_changed_; }
  bool after_commit() const { return phase_ == Phase::kPost; }
  // Post-commit: why the message must be held, if a sink said so.
  const std::string& quarantine_reason() const { return quarantine_; }
  // EOD before COMMIT: the binding (discard: true) that discarded the
  // message with its 2xx, if one did.
  const std::string& discarded_by() const { return discarded_by_; }

 private:
  enum class Phase { kPre, kNative, kPost, kDone };
  struct Call;

  void Step();
  void Invoke(const BindingConfig* b);
  // Waits for the binding's call slot (sink_calls.h), then StartCall.
  void InvokeNow(const BindingConfig* b);
  void StartCall(const BindingConfig* b, const std::shared_ptr<Call>& call,
                 std::chrono::system_clock::time_point until,
                 SinkCallLimits::Slot slot);
  void Finished(const std::shared_ptr<Call>& call,
                absl::StatusOr<v1::Verdict> result);
  void Failure(const v1::Binding& spec, const std::string& why);
  // Post-COMMIT: the message is to be quarantined (made durable at once).
  void Quarantine(std::string reason);

  const ChainEnv env_;
  Strand strand_;
  const std::shared_ptr<const Config> config_;
  v1::Event event_;
  std::vector<const BindingConfig*> pre_, post_;
  Phase phase_ = Phase::kPre;
  bool redelivery_ = false;
  const std::chrono::steady_clock::time_point chain_started_ =
      std::chrono::steady_clock::now();
  size_t index_ = 0;
  bool stopped_ = false;
  bool consumed_ = false;
  bool sink_replied_ = false;
  bool close_ = false;
  v1::Reply reply_;
  v1::Envelope envelope_;
  bool envelope_changed_ = false;
  std::string quarantine_;
  std::string discarded_by_;
  std::function<NativeResult(ChainRun&)> native_;
  std::function<void(ChainRun&)> after_native_;
  Done done_;
};

}  // namespace sinkline::broker
