// The trace header the broker adds to every message (RFC 5321 §4.4): who
// sent it, to which host, by which protocol (RFC 3848, RFC 6531), under
// which queue id, for which recipient, and when.
#pragma once

#include <string>

#include "absl/time/time.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// "Received: from <helo> ([<ip>])\r\n\tby <host> (Sinkline) with ESMTPS
// id <queue id>\r\n\tfor <rcpt>; <RFC 5322 date>\r\n". `for` only with one
// recipient (more would disclose the others).
std::string ReceivedHeader(const v1::SessionInfo& session,
                           const v1::Envelope& envelope,
                           const std::string& queue_id, absl::Time now);

}  // namespace sinkline::broker
