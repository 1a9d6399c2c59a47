// What a sink may answer: its reply and its verdict are checked against the
// event and the binding before anything of them is used. An invalid verdict
// is a sink failure (the binding's failure policy applies).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/sink.pb.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// A one-line reply.
v1::Reply MakeReply(uint32_t code, const std::string& enhanced,
                    const std::string& text);

// Checks a reply a sink gives: code class 2/4/5, enhanced code of the same
// class, text without CR or LF.
absl::Status ValidateReply(const v1::Reply& reply);

// Checks a sink's verdict against the event and the binding.
absl::Status ValidateVerdict(const v1::Event& event, const v1::Binding& binding,
                             bool after_commit, const v1::Verdict& verdict);

}  // namespace sinkline::broker
