// A queue backend that relays each released message to a next-hop MTA over
// SMTP (RFC 5321): EHLO, MAIL FROM with SIZE and BODY when the next hop
// offers them, one RCPT per recipient, DATA with dot-stuffing, QUIT. A 4xx
// or an unreachable next hop defers (the broker retries with backoff); a 5xx
// refuses for good, per recipient where the next hop answered per
// recipient.
#pragma once

#include <chrono>
#include <string>

#include "sink_broker/queue_backend.h"

namespace sinkline::broker {

struct SmtpRelayOptions {
  // host:port of the next hop; [v6]:port for IPv6 literals.
  std::string next_hop;
  // Name sent in EHLO.
  std::string helo_name = "localhost";
  std::chrono::milliseconds connect_timeout{30000};
  // Bound on each command's reply (RFC 5321 §4.5.3.2 suggests minutes; a
  // next hop on the same network answers far sooner).
  std::chrono::milliseconds command_timeout{300000};
};

class SmtpRelayBackend : public QueueBackend {
 public:
  explicit SmtpRelayBackend(SmtpRelayOptions options)
      : options_(std::move(options)) {}
  absl::StatusOr<SubmitOutcome> Submit(
      const v1::QueueEntry& entry, const std::string& content_path) override;
  std::string Describe() const override {
    return "smtp-relay " + options_.next_hop;
  }

 private:
  const SmtpRelayOptions options_;
};

// What dot-stuffing carries from one chunk to the next.
struct DotStuffState {
  bool at_line_start = true;
  bool after_cr = false;
};

// Dot-stuffs `data` for DATA (RFC 5321 §4.5.2): a '.' that starts a line
// gets another, and a bare LF becomes CRLF (a next hop must never see a
// bare LF: it would end the message early on some servers).
std::string DotStuff(absl::string_view data, DotStuffState& state);

}  // namespace sinkline::broker
