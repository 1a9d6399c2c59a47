// What an operator does to one message through the Admin service beyond
// releasing it: hold a message that waits for the queue backend, delete a
// message for good, read its content. Also the gauges that the alert rules
// in deploy/monitoring need and nothing else measures.
//
// The submitter asks BeginAttempt() before every hand-over to the queue
// backend, so that a held or deleted message is never tried again, and an
// operator action never lands in the middle of an attempt. Operator
// actions (release too) take turns on release_mu().
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/messages.h"
#include "sink_broker/spool.h"
#include "sinkline/v1/admin.pb.h"

namespace sinkline::broker {

class OperatorActions {
 public:
  OperatorActions(const Spool& spool, MessageTable& messages)
      : spool_(spool), messages_(messages) {}

  // One hand-over of a message to the queue backend. False (and nothing to
  // do) when an operator held or deleted the message meanwhile.
  class Attempt {
   public:
    Attempt(OperatorActions* actions, std::string queue_id)
        : actions_(actions), queue_id_(std::move(queue_id)) {}
    Attempt(const Attempt&) = delete;
    Attempt& operator=(const Attempt&) = delete;
    ~Attempt();
    explicit operator bool() const { return actions_ != nullptr; }

   private:
    OperatorActions* actions_;
    std::string queue_id_;
  };
  Attempt BeginAttempt(const std::string& queue_id);

  // HoldMessage: RELEASING -> HELD, recorded beside the content so that a
  // restart keeps it held.
  absl::Status Hold(const std::string& queue_id, const std::string& reason);
  // DeleteMessage: HELD, QUARANTINED, FAILED or RELEASING -> DELETED, its
  // files gone from the spool.
  absl::Status Delete(const std::string& queue_id);
  // ReadMessage: the content of a message still in the spool.
  absl::StatusOr<v1::ReadMessageResponse> Read(
      const v1::ReadMessageRequest& request) const;

  // One operator action on a message at a time.
  absl::Mutex& release_mu() { return release_mu_; }

 private:
  const Spool& spool_;
  MessageTable& messages_;
  absl::Mutex release_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  // Messages being handed to the queue backend right now.
  std::set<std::string> attempting_ ABSL_GUARDED_BY(mu_);
};

// The gauges operators alert on, set with each spool scan:
// sinkline_broker_oldest_deferred_seconds (age of the oldest message that
// waits for the queue backend, RELEASING; 0 with none) and
// sinkline_broker_spool_filesystem_bytes{kind="size"|"avail"} (the
// filesystem the spool is on).
void UpdateOperatorGauges(const MessageTable& messages,
                          const std::string& spool_dir);

}  // namespace sinkline::broker
