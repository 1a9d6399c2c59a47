// Identifiers the broker makes: queue ids and lease tokens.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace sinkline::broker {

// Unique, time-ordered, unguessable-enough queue id: 10 base-36 digits of
// microseconds since the epoch, then 6 random base-36 digits.
std::string NewQueueId();
// An id that arrives on the wire (session, transaction): 1 to 64 of
// [A-Za-z0-9._-], not starting with '.'. Nothing on disk is named from it;
// the check keeps logs and operator views sane and refuses what no edge sends.
bool ValidWireId(absl::string_view id);
// 32 random bytes from OpenSSL's CSPRNG, hex-encoded.
std::string NewToken();

}  // namespace sinkline::broker
