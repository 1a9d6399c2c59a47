// Delivery status notifications (RFC 3464 multipart/report, RFC 3461
// parameters): once a message was accepted, recipients that fail for good
// or expire are reported to the envelope sender (RFC 5321 §6.1), quoting
// the next hop's reply. None for the null sender, none for a recipient
// whose NOTIFY leaves out FAILURE; the DSN itself goes from the null sender,
// so it never causes another. The report returns the original's header
// (text/rfc822-headers), or with RET=FULL the whole original
// (message/rfc822) when it is at most `max_return_bytes` (a larger one
// falls back to its header, and the report says so). Without RET the
// header only (RFC 3461 §4.3 leaves it to the MTA).
//
// The DSN is committed to the spool as a message of its own (the same
// durability as any other) and handed to the same queue backend.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sink_broker/delivery_state.h"
#include "sink_broker/spool.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// The recipients of `failed` a DSN reports (NOTIFY allows it); empty when
// none is due, also for a null sender.
std::vector<RecipientRecord> DsnRecipients(
    const v1::QueueEntry& original, const std::vector<RecipientRecord>& failed);

struct DsnOptions {
  // The largest original returned whole under RET=FULL
  // (--dsn-max-return-bytes); a larger one is returned as its header.
  uint64_t max_return_bytes = 10 * 1024 * 1024;
};

// What of the original goes in the report's third part.
struct ReturnedContent {
  // The header block (with its CRLF, without the empty line after it), or
  // the whole message when `full`.
  std::string bytes;
  bool full = false;
  // Said to the person reading the report (e.g. why RET=FULL got the
  // header only); empty for nothing.
  std::string note;
};

// The report, CRLF line ends. `message_id` names the report.
std::string BuildDsn(const v1::QueueEntry& original,
                     const std::vector<RecipientRecord>& recipients,
                     const ReturnedContent& returned,
                     const std::string& reporting_mta,
                     const std::string& message_id, absl::Time now);
// The same with the original's header block only.
std::string BuildDsn(const v1::QueueEntry& original,
                     const std::vector<RecipientRecord>& recipients,
                     const std::string& original_header,
                     const std::string& reporting_mta,
                     const std::string& message_id, absl::Time now);

// What of the original (its content at `content_path`, `size` bytes) a
// report returns: RET=FULL and at most options.max_return_bytes: all of
// it; otherwise its header, with a note when RET=FULL could not be met.
ReturnedContent ContentToReturn(const v1::QueueEntry& original,
                                const std::string& content_path,
                                const DsnOptions& options);

// Builds the DSN for `failed` recipients of `original` (content in the
// spool) and commits it as a new message from <> to the original sender.
// nullopt when no DSN is due.
absl::StatusOr<std::optional<v1::QueueEntry>> CommitDsn(
    const Spool& spool, const v1::QueueEntry& original,
    const std::vector<RecipientRecord>& failed, const DsnOptions& options = {});

}  // namespace sinkline::broker
