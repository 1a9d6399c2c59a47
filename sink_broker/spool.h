// The broker's spool, the one place that knows its layout:
//   incoming/<name>          content while it arrives (incoming.h)
//   committed/<id>.msg       a committed message's content (also while it
//                            is failed: an operator may still release it)
//   state/                   every record, in one store (spool_store.h):
//     e/<id>                 the envelope record (a binary
//                            sinkline.v1.QueueEntry); a message is committed
//                            once this is written (durably)
//     d/<id>/<binding>       a post-COMMIT binding that finished
//     h/<id>                 held or quarantined: state name, then reason
//     r/<id>                 per-recipient delivery state (delivery_state.h)
//     f/<id>                 refused for good: the reason
// A spool in the old layout (records as files beside the content:
// committed/<id>.{env,done,hold,rcpt}, failed/<id>.{msg,env,reason}) is
// imported into the store by Prepare() and its record files removed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sink_broker/spool_store.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// Every record of the spool under `spool_dir` to `out`, one JSON object a
// line: {"key": "e/<id>", "entry": <the QueueEntry as JSON>} for envelope
// records, {"key": ..., "value": "<text>"} for the others. Read-only, also
// while a broker runs on it (sinkline-broker --dump-spool; the tests).
absl::Status DumpSpool(const std::string& spool_dir, std::ostream& out);

class Spool {
 public:
  // Opens the store under <dir>/state (shared by every Spool on `dir` in
  // this process); should that fail, every call returns why.
  explicit Spool(std::string dir, const StoreOptions& options = {});
  const std::string& dir() const { return dir_; }

  // Creates incoming/ and committed/; removes partial incoming files left
  // by a crash (nothing uncommitted was ever acknowledged); imports the
  // records of a spool in the old layout (spool_import.cc).
  absl::Status Prepare() const;

  std::string ContentPath(const std::string& queue_id) const;

  // The envelope record of a committed message, written durably (COMMIT:
  // the message is committed once this returned OK).
  absl::Status WriteEnvelope(const v1::QueueEntry& entry) const;
  absl::StatusOr<v1::QueueEntry> ReadEnvelope(
      const std::string& queue_id) const;

  // The envelope record of a committed message with its envelope replaced
  // by `envelope` (a lease's edits), rewritten atomically.
  absl::Status WriteEditedEnvelope(const std::string& queue_id,
                                   const v1::Envelope& envelope) const;

  // Post-COMMIT bindings that finished with a message, so that a restart
  // runs only the others again.
  void MarkFinished(const std::string& queue_id,
                    const std::string& binding) const;
  std::set<std::string> Finished(const std::string& queue_id) const;

  // Held or quarantined for an operator.
  struct Hold {
    v1::MessageState state = v1::MESSAGE_STATE_HELD;
    std::string reason;
  };
  absl::Status WriteHold(const std::string& queue_id, v1::MessageState state,
                         const std::string& reason) const;
  std::optional<Hold> ReadHold(const std::string& queue_id) const;
  void RemoveHold(const std::string& queue_id) const;

  // Per-recipient delivery state (delivery_state.h), durably; nullopt when
  // none was written.
  std::optional<std::string> ReadDeliveryState(
      const std::string& queue_id) const;
  absl::Status WriteDeliveryState(const std::string& queue_id,
                                  const std::string& text) const;

  // Submitted: every record of the message goes (one batch, not synced: a
  // later durable write carries it; lost with the machine, the message is
  // submitted again), then its content.
  void RemoveCommitted(const std::string& queue_id) const;
  // Refused for good: recorded with the reason (one durable batch); the
  // content stays for an operator.
  absl::Status MoveToFailed(const std::string& queue_id,
                            const std::string& reason) const;
  // An operator deletes a message: every record of it goes (durably, first:
  // without them nothing is recovered), then its content. Returns how many
  // records and files went.
  absl::StatusOr<int> RemoveAll(const std::string& queue_id) const;
  // An operator lets a failed message go on: committed again.
  absl::Status RestoreFailed(const std::string& queue_id) const;

  // What a previous run left: committed messages (unreadable records are
  // logged and skipped) and failed ones with their reasons.
  std::vector<v1::QueueEntry> ListCommitted() const;
  struct Failed {
    v1::QueueEntry entry;
    std::string reason;
  };
  std::vector<Failed> ListFailed() const;

  // A COMMIT cut short (the process killed between moving the content and
  // writing the envelope record) leaves <id>.msg without a record; nobody
  // was told 250 for it, so it goes. Partial writes (*.tmp, *.edit) go too:
  // the content they would have replaced is intact. So do records whose
  // content is gone (removed after submission or deletion, the records'
  // removal not yet durable). Returns how many files and records went.
  int RemovePartialCommits() const;

  // Measures the spool: sets sinkline_broker_spool_bytes{dir} and
  // sinkline_broker_spool_messages{dir} for incoming (arriving), committed
  // (durable, not yet submitted), failed, and the store's files
  // (dir="state") and memtables (sinkline_broker_store_memtable_bytes).
  // Returns the bytes per kind.
  std::map<std::string, uint64_t> UpdateGauges() const;

 private:
  absl::Status Ready() const;
  // Adds deletes of every record of `queue_id` to `batch`; returns how
  // many.
  int DeleteRecords(const std::string& queue_id,
                    rocksdb::WriteBatch& batch) const;
  // The old layout's records into the store (spool_import.cc).
  absl::Status ImportOldLayout() const;
  std::string Committed(const std::string& queue_id, const char* ext) const;
  const std::string dir_;
  std::shared_ptr<SpoolStore> store_;
  absl::Status open_status_;
};

}  // namespace sinkline::broker
