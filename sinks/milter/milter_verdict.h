// The milter's answers as Sinkline verdicts, its modifications as edits.
//
//   continue, accept      → continue
//   reject                → 550 5.7.1 (RCPT: that recipient only)
//   tempfail              → 451 4.7.1
//   reply code            → that reply, with its enhanced code
//   discard               → at EOD, 250 and the message is dropped
//   shutdown, conn_fail   → 421 4.7.0 and the session is closed
//   quarantine            → after COMMIT, held for an operator (quarantined);
//                           before it, an X-Sinkline-Quarantine header
//   add/insert/change header, add/delete recipient, change sender
//                         → content and envelope edits
//   replace body          → streamed to the broker's Content service
#pragma once

#include "absl/status/status.h"
#include "sinkline/sdk/sink.h"
#include "sinks/milter/milter_replay.h"

namespace sinkline::milter {

// Fills `ctx`'s verdict from `result`. `actions`: what the milter
// negotiated; a modification outside them is a protocol error. Returns an
// error the caller turns into a sink failure.
absl::Status ApplyResult(const StepResult& result, bool discard,
                         uint32_t actions, sdk::EventContext& ctx);

// Header values from milters fold with bare LF; Sinkline wants CRLF + WSP.
std::string NormalizeFolding(absl::string_view value);

// The reply for a refusal or tempfail answer.
struct SmtpReply {
  int code = 0;
  std::string enhanced;
  std::string text;
};
SmtpReply RefusalReply(const Reply& r);

}  // namespace sinkline::milter
