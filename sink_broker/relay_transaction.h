// One SMTP transaction on a relay connection (relay_connection.h): MAIL
// FROM with the parameters the next hop offers (SIZE, BODY, SMTPUTF8,
// DSN's RET and ENVID), one RCPT per recipient (NOTIFY, ORCPT), DATA with
// dot-stuffing; RSET first on a cached connection; all in one write when
// the next hop offers PIPELINING (RFC 2920). A coroutine on the relay's
// I/O thread.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "sink_broker/queue_backend.h"
#include "sink_broker/relay_connection.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker::relay {

// Why a transaction on a cached connection ended: `stale` when the
// connection turned out dead before the next hop answered anything of this
// transaction (then a fresh connection is tried; nothing was delivered).
struct TransactionResult {
  absl::StatusOr<SubmitOutcome> outcome;
  bool stale = false;
};

// The message whose content is open at `fd` (from its start), for the
// recipients in `entry`. `reused`: the connection comes from the cache.
Awaitable<TransactionResult> Transaction(Connection& c, bool reused,
                                         const v1::QueueEntry& entry, int fd,
                                         const std::string& content_path);

}  // namespace sinkline::broker::relay
