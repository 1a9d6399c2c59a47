// From Sinkline events to milter steps. A session's state records which
// steps the milter has seen; CatchUp sends whatever is missing, from the
// event's session and envelope. Bound to EOD only, every transaction is
// replayed whole (connect, helo, mail, each rcpt, data, headers, body, end of
// message), so any replica can take it; bound per command (with session
// affinity), each event sends only its own step.
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "sinkline/sdk/sink.h"
#include "sinks/milter/milter_session.h"

namespace sinkline::milter {

namespace v1 = ::sinkline::v1;

// Macro names sent at each stage when the milter sent no list of its own
// (like Postfix's milter_*_macros).
struct MacroConfig {
  std::array<std::vector<std::string>, kStages> names;
  std::string daemon_name = "sinkline";
  static MacroConfig Defaults();
  // "j {daemon_name} ..." → names; braces optional.
  static std::vector<std::string> Parse(absl::string_view list);
};

// The values this bridge knows for a macro in an event, "" when unknown.
// `rcpt`, when given, is the recipient of {rcpt_addr} and {rcpt_host}
// (else the event's).
std::string MacroValue(absl::string_view name, const v1::Event& event,
                       const MacroConfig& config,
                       const v1::Recipient* rcpt = nullptr);
Macros MacrosFor(Stage stage, const v1::Event& event, const MacroConfig& config,
                 const MilterSession& session,
                 const v1::Recipient* rcpt = nullptr);

// A message split for the milter: header fields (value as in the message,
// leading space and CRLF folding included) and the body.
struct SplitMessage {
  std::vector<std::pair<std::string, std::string>> headers;
  absl::string_view body;
};
SplitMessage Split(absl::string_view message);

// Where the first answer that is not "continue" came from.
enum class Step { kConnect, kHelo, kMail, kRcpt, kData, kMessage, kNone };

struct StepResult {
  Step step = Step::kNone;
  Outcome outcome;
  // Recipients the milter refused while they were replayed (EOD mode: they
  // were accepted already, so they are removed from the envelope).
  std::vector<std::string> refused_recipients;
  Reply last_refusal;
};

// What the milter has seen of one SMTP session.
struct SessionState {
  std::mutex mu;
  std::unique_ptr<MilterSession> milter;
  bool connected = false;
  bool helo_sent = false;
  std::string helo;
  std::string transaction;  // transaction id of the MAIL sent
  // Recipients of this transaction the milter was sent (lower-cased).
  std::set<std::string> rcpts_sent;
  bool discard = false;  // the milter asked to discard this transaction
  Clock::time_point last_used = Clock::now();
};

// Sends every step up to and including `event`'s own that the milter has not
// seen; stops at the first final answer other than continue. For EOD,
// `message` is the whole message, `progress` extends the deadline and
// `body` takes a replaced body as it arrives.
absl::StatusOr<StepResult> CatchUp(
    SessionState& state, const v1::Event& event, const MacroConfig& macros,
    absl::string_view message,
    const std::function<Clock::time_point(Clock::time_point)>& progress,
    const BodySink& body = {});

}  // namespace sinkline::milter
