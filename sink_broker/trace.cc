#include "sink_broker/trace.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sinkline::broker {

namespace {

// A HELO name or host name as it may appear in the header: printable
// ASCII without the characters that would end a comment or the field.
std::string Clean(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c > 32 && c < 127 && c != '(' && c != ')' && c != ';' && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else if (c >= 128) {
      out.push_back(static_cast<char>(c));  // UTF-8 (RFC 6531)
    }
  }
  return out.empty() ? "unknown" : out;
}

}  // namespace

std::string ReceivedHeader(const v1::SessionInfo& session,
                           const v1::Envelope& envelope,
                           const std::string& queue_id, absl::Time now) {
  const std::string& ip = session.client().ip();
  const std::string literal = absl::StrContains(ip, ':')
                                  ? absl::StrCat("[IPv6:", ip, "]")
                                  : absl::StrCat("[", ip, "]");
  bool utf8 = false;
  for (const auto& p : envelope.mail_params()) {
    utf8 |= absl::EqualsIgnoreCase(p.key(), "SMTPUTF8");
  }
  std::string with = utf8 ? "UTF8SMTP" : (session.esmtp() ? "ESMTP" : "SMTP");
  if (session.tls().active()) with += "S";
  if (!session.auth_identity().empty()) with += "A";
  std::string out =
      absl::StrCat("Received: from ", Clean(session.helo_name()), " (", literal,
                   ")\r\n\tby ", Clean(session.server_hostname()),
                   " (Sinkline) with ", with, " id ", queue_id);
  if (session.tls().active() && !session.tls().version().empty()) {
    absl::StrAppend(&out, "\r\n\t(using ", Clean(session.tls().version()),
                    " with cipher ", Clean(session.tls().cipher()), ")");
  }
  if (envelope.recipients_size() == 1) {
    absl::StrAppend(&out, "\r\n\tfor <", envelope.recipients(0).address(), ">");
  }
  absl::StrAppend(
      &out, "; ",
      absl::FormatTime("%a, %d %b %Y %H:%M:%S %z", now, absl::UTCTimeZone()),
      "\r\n");
  return out;
}

}  // namespace sinkline::broker
