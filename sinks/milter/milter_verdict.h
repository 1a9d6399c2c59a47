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
//   replace body          → streamed to the broker's Content service as
//                           it arrives (BodyStream)
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "sinkline/sdk/sink.h"
#include "sinkline/v1/content.grpc.pb.h"
#include "sinks/milter/milter_replay.h"

namespace sinkline::milter {

// A replaced body streamed to the broker's Content service (ReplaceBody,
// under the event's lease) chunk by chunk as the milter sends it, so the
// bridge never holds it whole. The stream opens at the first chunk; the
// staged body is published with the lease's other writes only when the
// verdict is accepted, and a stream never finished is cancelled.
class BodyStream {
 public:
  // `actions`: what the milter negotiated (SMFIF_CHGBODY is needed).
  BodyStream(const sdk::EventContext& ctx, uint32_t actions)
      : ctx_(ctx), actions_(actions) {}
  ~BodyStream();
  BodyStream(const BodyStream&) = delete;
  BodyStream& operator=(const BodyStream&) = delete;

  absl::Status Write(absl::string_view chunk);
  // Ends the stream and returns the broker's answer (OK when nothing was
  // streamed).
  absl::Status Finish();
  uint64_t octets() const { return octets_; }
  // The binding cannot write: the chunks were dropped.
  bool dropped() const { return dropped_; }

 private:
  const sdk::EventContext& ctx_;
  const uint32_t actions_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<v1::EditResponse> response_;
  std::unique_ptr<grpc::ClientWriter<v1::ReplaceBodyRequest>> writer_;
  uint64_t octets_ = 0;
  bool dropped_ = false;
  bool finished_ = false;
};

// Fills `ctx`'s verdict from `result`. `negotiated`: the milter's actions
// and protocol flags; a modification outside them is a protocol error. `body`:
// the stream a replaced body went to (else Outcome::body is sent). Returns an
// error the caller turns into a sink failure.
absl::Status ApplyResult(const StepResult& result, bool discard,
                         const Options& negotiated, sdk::EventContext& ctx,
                         BodyStream* body = nullptr);

// Header values from milters fold with bare LF; Sinkline wants CRLF + WSP.
std::string NormalizeFolding(absl::string_view value);

// A header value a milter added or changed, as Sinkline's edits take it
// (they write "Name: value"). With SMFIP_HDR_LEADSPC negotiated the milter
// sends the octets after the colon, leading space included (OpenDKIM does):
// that one space is Sinkline's own.
std::string HeaderValue(absl::string_view value, bool lead_space);

// The reply for a refusal or tempfail answer.
struct SmtpReply {
  int code = 0;
  std::string enhanced;
  std::string text;
};
SmtpReply RefusalReply(const Reply& r);

}  // namespace sinkline::milter
