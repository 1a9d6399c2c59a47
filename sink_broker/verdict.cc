#include "sink_broker/verdict.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "sink_broker/message_edit.h"

namespace sinkline::broker {

v1::Reply MakeReply(uint32_t code, const std::string& enhanced,
                    const std::string& text) {
  v1::Reply r;
  r.set_code(code);
  r.set_enhanced_code(enhanced);
  r.add_lines(text);
  return r;
}

absl::Status ValidateReply(const v1::Reply& reply) {
  const uint32_t code = reply.code();
  const uint32_t cls = code / 100;
  if (code < 200 || code > 599 || cls == 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("reply code ", code, " is not 2xx, 4xx or 5xx"));
  }
  const std::string& enh = reply.enhanced_code();
  // class.subject.detail: 1 digit, 1-3 digits, 1-3 digits.
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = enh.find('.', start);
    parts.push_back(enh.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  bool ok = parts.size() == 3 && parts[0].size() == 1 &&
            parts[0][0] == static_cast<char>('0' + cls);
  for (size_t i = 1; ok && i < 3; ++i) {
    ok = !parts[i].empty() && parts[i].size() <= 3 &&
         std::all_of(parts[i].begin(), parts[i].end(), absl::ascii_isdigit);
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("enhanced status code '", absl::CEscape(enh),
                     "' does not fit reply ", code));
  }
  if (reply.lines_size() == 0) {
    return absl::InvalidArgumentError("reply without text");
  }
  for (const auto& line : reply.lines()) {
    if (line.find_first_of("\r\n") != std::string::npos) {
      return absl::InvalidArgumentError("reply text contains CR or LF");
    }
    if (line.size() > 500) {
      return absl::InvalidArgumentError("reply line longer than 500 octets");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateVerdict(const v1::Event& event, const v1::Binding& binding,
                             bool after_commit, const v1::Verdict& verdict) {
  if (verdict.action() != v1::ACTION_CONTINUE &&
      verdict.action() != v1::ACTION_CONSUME) {
    return absl::InvalidArgumentError("verdict has no action");
  }
  const bool has_reply = verdict.has_reply() && verdict.reply().code() != 0;
  if (verdict.action() == v1::ACTION_CONSUME && !has_reply && !after_commit) {
    return absl::InvalidArgumentError("CONSUME without a reply");
  }
  if (has_reply) {
    if (auto st = ValidateReply(verdict.reply()); !st.ok()) return st;
  }
  if (event.type() == v1::EVENT_TYPE_EOD && !after_commit &&
      verdict.action() == v1::ACTION_CONSUME && has_reply &&
      verdict.reply().code() / 100 == 2 && !binding.discard()) {
    // The client would hear 2xx for a message that is never committed.
    return absl::InvalidArgumentError(
        "CONSUME with a 2xx reply at EOD before COMMIT would accept a message "
        "and drop it (a binding with discard: true may)");
  }
  if (verdict.hold_lease()) {
    if (binding.content_access() == v1::CONTENT_ACCESS_NONE) {
      return absl::InvalidArgumentError("hold_lease without content access");
    }
    if (!after_commit) {
      return absl::InvalidArgumentError(
          "hold_lease is for sinks after COMMIT; before it the client waits");
    }
  }
  if (verdict.drop_session() && has_reply && verdict.reply().code() != 421) {
    return absl::InvalidArgumentError("drop_session needs a 421 reply");
  }
  const bool writer = binding.content_access() == v1::CONTENT_ACCESS_READ_WRITE;
  if (verdict.content_edits_size() > 0) {
    if (!writer) {
      return absl::PermissionDeniedError(
          "content edits need content_access read-write");
    }
    if (event.type() != v1::EVENT_TYPE_EOD) {
      return absl::InvalidArgumentError("content edits are only for EOD");
    }
    for (const auto& e : verdict.content_edits()) {
      if (auto st = ValidateEdit(e); !st.ok()) return st;
    }
  }
  if (verdict.envelope_edits_size() > 0) {
    if (!writer) {
      return absl::PermissionDeniedError(
          "envelope edits need content_access read-write");
    }
    const bool utf8 = EnvelopeIsUtf8(event.envelope());
    for (const auto& e : verdict.envelope_edits()) {
      if (auto st = ValidateEnvelopeEdit(e, utf8); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace sinkline::broker
