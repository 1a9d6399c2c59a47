// The commit point: the native handler of EOD (priority 24575) makes the
// message durable and gives it its queue id before the client hears 250;
// and the two ways a lease's content edits are published, before COMMIT
// into the arriving file, after it as a new committed version.
#pragma once

#include <memory>
#include <string>

#include "sink_broker/chain.h"
#include "sink_broker/incoming.h"
#include "sink_broker/lease.h"
#include "sink_broker/messages.h"
#include "sink_broker/spool.h"

namespace sinkline::broker {

struct CommitContext {
  const Spool* spool = nullptr;
  MessageTable* messages = nullptr;
  std::string broker_id;
};

// The reply for content that could not be stored: 452 4.3.1 when the disk
// is full (counted in sinkline_broker_spool_full_total), else 451 4.3.0.
v1::Reply StoreFailureReply(const absl::Status& st);

// COMMIT: durable first (content and envelope fsynced under `queue_id`),
// then the reply "250 2.0.0 Ok: queued as <id>" for the client; on failure
// 451 4.3.0 and kStop. On success `committed` holds the envelope record and
// `record` points at the committed content.
NativeResult CommitMessage(const CommitContext& ctx,
                           const std::string& queue_id,
                           IncomingMessage& message, MessageRecord& record,
                           ChainRun& run, v1::QueueEntry& committed);

// Edits of a committed message: a new version, fsynced, renamed over the
// old one. Readers holding the old version keep their snapshot.
MessageRecord::ApplyEdits CommittedEdits(
    std::shared_ptr<std::weak_ptr<MessageRecord>> holder);

// Edits of a message that arrives: before COMMIT into the incoming file,
// after it as CommittedEdits.
MessageRecord::ApplyEdits ArrivingEdits(
    std::shared_ptr<IncomingMessage> message,
    std::shared_ptr<std::weak_ptr<MessageRecord>> holder);

}  // namespace sinkline::broker
