// Session affinity: a binding with session_affinity sends every event of one
// SMTP session to the same replica of its sink, so that a sink may keep
// per-session state (a milter connection that follows the session). The
// sink's target is split into one target per address — a gRPC address list
// ("ipv4:10.0.0.1:7001,10.0.0.2:7001") or a DNS name that resolves to several
// addresses — and one is chosen by rendezvous hashing of the session id: the
// choice is the same on every broker and survives restarts, and a replica
// that goes away moves only its own sessions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace sinkline::broker {

// The per-address targets of `target`, sorted; the target itself when it
// names one address or cannot be resolved. `resolve` false: names are not
// looked up (a list is still split).
std::vector<std::string> SplitTarget(absl::string_view target,
                                     bool resolve = true);

// The replica of `replicas` for `session_id` (highest-random-weight hash, a
// stable 64-bit FNV-1a); "" when there is none.
std::string PickReplica(const std::vector<std::string>& replicas,
                        absl::string_view session_id);

// SplitTarget with a small cache (names are looked up again after `ttl`),
// then PickReplica. Thread-safe.
std::string AffinityTarget(absl::string_view target,
                           absl::string_view session_id,
                           std::chrono::seconds ttl = std::chrono::seconds(30));

}  // namespace sinkline::broker
