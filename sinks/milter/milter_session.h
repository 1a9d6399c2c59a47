// One milter conversation, as the MTA side drives it: each step sends its
// macros and command unless the milter opted out of it (SMFIP_NO*), waits for
// the answer unless the milter said it sends none (SMFIP_NR_*), and collects
// the modifications of end-of-message. Knows the protocol, not Sinkline.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinks/milter/milter_codec.h"
#include "sinks/milter/milter_connection.h"

namespace sinkline::milter {

// The answer to one step: the final reply and, at end of message, the
// modifications the milter asked for, in order.
struct Outcome {
  Reply final;
  std::vector<Reply> edits;  // headers, recipients, sender, quarantine
  bool body_replaced = false;
  std::string body;      // the new body, when body_replaced
  bool skipped = false;  // the step was not sent (opted out or accepted)
};

// Takes one chunk of a replaced body; an error ends the conversation.
using BodySink = std::function<absl::Status(absl::string_view)>;

struct SessionTimeouts {
  std::chrono::milliseconds command{10000};
  std::chrono::milliseconds eom{30000};
  // Largest replaced body accepted from the milter (a larger one is a
  // protocol error); --max-replaced-body.
  size_t max_body = 64 * 1024 * 1024;
};

class MilterSession {
 public:
  MilterSession(std::unique_ptr<Connection> conn, SessionTimeouts timeouts)
      : conn_(std::move(conn)), timeouts_(timeouts) {}

  const Options& options() const { return conn_->options(); }
  // Macro names the milter asked for at `stage` ("" when it sent no list).
  std::string RequestedMacros(Stage stage) const;

  absl::StatusOr<Outcome> Connect(absl::string_view hostname, char family,
                                  uint16_t port, absl::string_view address,
                                  const Macros& macros);
  absl::StatusOr<Outcome> Helo(absl::string_view helo, const Macros& macros);
  absl::StatusOr<Outcome> Mail(absl::string_view sender,
                               const std::vector<std::string>& args,
                               const Macros& macros);
  absl::StatusOr<Outcome> Rcpt(absl::string_view recipient,
                               const std::vector<std::string>& args,
                               const Macros& macros);
  absl::StatusOr<Outcome> Data(const Macros& macros);
  absl::StatusOr<Outcome> Unknown(absl::string_view line);
  // The message: header fields, end of headers, body chunks. Header values
  // are given as in the message (leading space, CRLF in folded lines).
  absl::StatusOr<Outcome> Header(absl::string_view name,
                                 absl::string_view value);
  absl::StatusOr<Outcome> Eoh(const Macros& macros);
  absl::StatusOr<Outcome> Body(absl::string_view chunk);
  // `progress` is called on each SMFIR_PROGRESS and returns the new
  // deadline of the whole end-of-message answer. `body`, when given, takes
  // each SMFIR_REPLBODY chunk as it arrives (then Outcome::body stays
  // empty); without it the chunks are collected in Outcome::body. Either
  // way the new body is bounded by SessionTimeouts::max_body.
  absl::StatusOr<Outcome> EndOfMessage(
      const Macros& macros,
      const std::function<Clock::time_point(Clock::time_point)>& progress,
      const BodySink& body = {});
  // Ends the message (SMFIC_ABORT): the next MAIL may follow.
  absl::Status Abort();

  // True once the milter answered accept for the whole connection, or for
  // the message at hand (nothing more is sent until the next message).
  bool connection_accepted() const { return connection_accepted_; }
  bool message_done() const { return message_done_; }
  // A new transaction starts: message state is reset.
  void NewMessage() {
    message_done_ = false;
    body_skipped_ = false;
  }

  // Gives the connection back, or null when it broke (then it is dropped).
  std::unique_ptr<Connection> Take() { return std::move(conn_); }
  bool broken() const { return broken_; }
  // The connection served an earlier session (it came from the pool).
  bool reused() const { return conn_ && conn_->reused(); }

 private:
  // Sends `macros` (when any) and the command `code`; when `reply` waits
  // for one final answer and returns it.
  absl::StatusOr<Outcome> Step(char code, absl::string_view data,
                               uint32_t no_flag, uint32_t nr_flag,
                               Stage macro_stage, const Macros& macros);
  absl::StatusOr<Reply> ReadFinal(Clock::time_point deadline);
  absl::Status Fail(absl::Status s) {
    broken_ = true;
    return s;
  }

  std::unique_ptr<Connection> conn_;
  SessionTimeouts timeouts_;
  bool connection_accepted_ = false;
  bool message_done_ = false;
  bool body_skipped_ = false;
  bool broken_ = false;
};

}  // namespace sinkline::milter
