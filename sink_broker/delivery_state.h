// Per-recipient delivery state of a committed message, kept durably in the
// spool's store beside its envelope record (r/<id>, spool.h): which recipients
// were delivered, which are deferred with the next hop's last reply, which
// failed for good with it. The envelope record holds only the recipients still
// to try, so a restart delivers nobody twice; this record remembers the rest,
// so that a restart forgets neither a refusal (its DSN is still due) nor a
// deferral's reason.
//
// One recipient a line: result, address, reply, parameters (k=v joined by
// spaces), tab-separated, each C-escaped.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sink_broker/queue_backend.h"
#include "sink_broker/spool.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

enum class RecipientResult { kDelivered, kDeferred, kFailed };

struct RecipientRecord {
  v1::Recipient recipient;
  RecipientResult result = RecipientResult::kDeferred;
  // The next hop's reply ("550 5.1.1 No such user") or why nothing was
  // sent ("next hop x: timed out (connect)").
  std::string reply;
};

std::string FormatDeliveryState(const std::vector<RecipientRecord>& records);
// DATA_LOSS for a line that is not a record.
absl::StatusOr<std::vector<RecipientRecord>> ParseDeliveryState(
    const std::string& text);

// A message's delivery state across attempts and restarts. While its last
// attempt left recipients deferred, the message counts in
// sinkline_broker_deferred_messages and, by its COMMIT time, in
// sinkline_broker_oldest_deferred_commit_timestamp_seconds (now minus it is
// the age of the oldest deferred message) and _age_seconds (as of the last
// change).
class DeliveryTracker {
 public:
  // Reads the record a previous attempt (or run) left, if any.
  DeliveryTracker(const Spool& spool, const v1::QueueEntry& entry);
  ~DeliveryTracker();
  DeliveryTracker(const DeliveryTracker&) = delete;
  DeliveryTracker& operator=(const DeliveryTracker&) = delete;

  // One attempt at the recipients in `tried`, and what came of it, written
  // durably (when someone is left deferred) before the caller rewrites the
  // envelope record.
  absl::Status Record(const v1::Envelope& tried,
                      const absl::StatusOr<SubmitOutcome>& result);
  // Deferred recipients fail (the message is too old): their last reply
  // stays, prefixed by `why`.
  void Expire(const std::string& why);

  std::vector<RecipientRecord> Failed() const;
  const std::vector<RecipientRecord>& records() const { return records_; }
  // The message is done (submitted or failed): it no longer counts as
  // deferred (its record goes with the message's other records:
  // Spool::RemoveCommitted, Spool::MoveToFailed).
  void Remove() const;

 private:
  RecipientRecord& Find(const v1::Recipient& r);
  void SetDeferred(bool deferred) const;
  const std::string queue_id_;
  const int64_t committed_s_;
  const Spool& spool_;
  std::vector<RecipientRecord> records_;
};

}  // namespace sinkline::broker
