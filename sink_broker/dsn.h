// Delivery status notifications (RFC 3464 multipart/report, RFC 3461
// parameters): once a message was accepted, recipients that fail for good
// or expire are reported to the envelope sender (RFC 5321 §6.1), quoting
// the next hop's reply. None for the null sender, none for a recipient
// whose NOTIFY leaves out FAILURE; the DSN itself goes from the null sender,
// so it never causes another. The report returns the original's header
// (text/rfc822-headers), also under RET=FULL.
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

// The report, CRLF line ends. `original_header` is the original's header
// block (without the empty line after it). `message_id` names the report.
std::string BuildDsn(const v1::QueueEntry& original,
                     const std::vector<RecipientRecord>& recipients,
                     const std::string& original_header,
                     const std::string& reporting_mta,
                     const std::string& message_id, absl::Time now);

// Builds the DSN for `failed` recipients of `original` (content in the
// spool) and commits it as a new message from <> to the original sender.
// nullopt when no DSN is due.
absl::StatusOr<std::optional<v1::QueueEntry>> CommitDsn(
    const Spool& spool, const v1::QueueEntry& original,
    const std::vector<RecipientRecord>& failed);

}  // namespace sinkline::broker
