// After the chain: a committed message whose chain is over and whose last
// lease has ended is quarantined, held, or handed to the queue backend;
// while the backend defers, it is tried again with backoff until it is
// taken, refused for good, or too old. Operators release held, quarantined
// and failed messages here too.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/lease.h"
#include "sink_broker/messages.h"
#include "sink_broker/operator_actions.h"
#include "sink_broker/queue_backend.h"
#include "sink_broker/spool.h"

namespace sinkline::broker {

struct SubmitOptions {
  // Threads that hand messages to the queue backend and record what it
  // did (the spool's writes; the relay itself is asynchronous).
  int workers = 20;
  // Backoff between attempts while the backend defers: from the minimum,
  // doubling up to the maximum.
  std::chrono::milliseconds retry_min{1000};
  std::chrono::milliseconds retry_max{300000};
  // A message still deferred this long after COMMIT fails.
  std::chrono::milliseconds max_queue_age{5LL * 24 * 3600 * 1000};
  // The largest original a DSN returns whole under RET=FULL (dsn.h).
  uint64_t dsn_max_return_bytes = 10 * 1024 * 1024;
};

class Submitter {
 public:
  // Retry timers run on `timers`; attempts on the submitter's own threads.
  Submitter(SubmitOptions options, QueueBackend& backend, const Spool& spool,
            MessageTable& messages, LeaseTable& leases,
            boost::asio::thread_pool& timers);
  ~Submitter();

  // The chain of a committed message is over: once no lease is active, it
  // is quarantined (when `quarantine` says why), held (a lease expired
  // under the hold policy), or submitted.
  // `slot` (in_flight.h) is given back once the message is held or its
  // first attempt is over.
  void ChainOver(std::shared_ptr<v1::QueueEntry> committed,
                 std::shared_ptr<MessageRecord> record, std::string quarantine,
                 std::shared_ptr<void> slot = nullptr);
  // Hands a message to the backend (with its record while leases may still
  // refer to it).
  void Submit(v1::QueueEntry entry,
              std::shared_ptr<MessageRecord> record = nullptr,
              std::shared_ptr<void> slot = nullptr);
  // An operator lets a held, quarantined or failed message go on:
  // NOT_FOUND for an unknown id, FAILED_PRECONDITION for any other state.
  // `released` runs once the release is recorded, before the message is
  // handed on (what the operator is shown is the release, not a later
  // attempt).
  absl::Status Release(const std::string& queue_id,
                       const std::function<void()>& released = nullptr);

  // Shutdown: deferred messages stay in the spool for the next start.
  // CancelRetries stops the retry timers; Join waits for attempts in
  // flight.
  void CancelRetries();
  void Join();

  QueueBackend& backend() { return backend_; }
  // Hold, delete and read by an operator (operator_actions.h).
  OperatorActions& operator_actions() { return operator_; }

 private:
  class Attempt;
  // Counts an attempt in progress until the returned token goes.
  std::shared_ptr<void> AttemptGoing();
  bool AddRetryTimer(const std::shared_ptr<boost::asio::steady_timer>& t);
  void RemoveRetryTimer(boost::asio::steady_timer* t);

  const SubmitOptions options_;
  QueueBackend& backend_;
  const Spool& spool_;
  MessageTable& messages_;
  LeaseTable& leases_;
  boost::asio::thread_pool& timers_;
  OperatorActions operator_;
  boost::asio::thread_pool pool_;
  absl::Mutex attempts_mu_;
  int attempts_ ABSL_GUARDED_BY(attempts_mu_) = 0;
  absl::Mutex retry_mu_;
  bool draining_ ABSL_GUARDED_BY(retry_mu_) = false;
  std::map<boost::asio::steady_timer*, std::weak_ptr<boost::asio::steady_timer>>
      retry_timers_ ABSL_GUARDED_BY(retry_mu_);
};

}  // namespace sinkline::broker
