// The broker's spool on disk, the one place that knows its layout:
//   incoming/<name>          content while it arrives (incoming.h)
//   committed/<id>.msg       a committed message's content
//   committed/<id>.env       its envelope record (binary
//   sinkline.v1.QueueEntry);
//                            a message is committed once this exists
//   committed/<id>.done      post-COMMIT bindings that finished, one a line
//   committed/<id>.hold      held or quarantined: state name, then reason
//   failed/<id>.{msg,env,reason}  refused for good, kept for an operator
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

class Spool {
 public:
  explicit Spool(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }

  // Creates incoming/, committed/ and failed/; removes partial incoming
  // files left by a crash (nothing uncommitted was ever acknowledged).
  absl::Status Prepare() const;

  std::string ContentPath(const std::string& queue_id) const;
  std::string EnvelopePath(const std::string& queue_id) const;
  std::string FailedContentPath(const std::string& queue_id) const;

  // The envelope record of a committed message, rewritten atomically.
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

  // Submitted: every file of the message goes.
  void RemoveCommitted(const std::string& queue_id) const;
  // Refused for good: content and envelope move to failed/ with the reason.
  absl::Status MoveToFailed(const std::string& queue_id,
                            const std::string& reason) const;
  // An operator deletes a message: every file of it, committed or failed,
  // goes (the envelope record first: without it nothing is recovered).
  // Returns how many files went.
  absl::StatusOr<int> RemoveAll(const std::string& queue_id) const;
  // An operator lets a failed message go on: back to committed/.
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
  // writing the envelope record) leaves <id>.msg without <id>.env; nobody
  // was told 250 for it, so it goes. Partial writes (*.tmp, *.edit) go too:
  // the record they would have replaced is intact. Returns how many files
  // went.
  int RemovePartialCommits() const;

  // Measures the spool: sets sinkline_broker_spool_bytes{dir} and
  // sinkline_broker_spool_messages{dir} for incoming (arriving), committed
  // (durable, not yet submitted) and failed. Returns the bytes per
  // directory.
  std::map<std::string, uint64_t> UpdateGauges() const;

 private:
  std::string Committed(const std::string& queue_id, const char* ext) const;
  std::string FailedPath(const std::string& queue_id, const char* ext) const;
  const std::string dir_;
};

}  // namespace sinkline::broker
