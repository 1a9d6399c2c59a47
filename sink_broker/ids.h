// Identifiers the broker makes: queue ids and lease tokens.
#pragma once

#include <string>

namespace sinkline::broker {

// Unique, time-ordered, unguessable-enough queue id: 10 base-36 digits of
// microseconds since the epoch, then 6 random base-36 digits.
std::string NewQueueId();
// 32 random bytes from OpenSSL's CSPRNG, hex-encoded.
std::string NewToken();

}  // namespace sinkline::broker
