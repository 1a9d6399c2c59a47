// Fuzz target for what the broker does with a sink's answer: the verdict
// checked against the event and the binding (sink_broker/verdict.h), then
// its envelope edits applied, and its content edits (header edits, body
// replacement, range writes) applied to a message on disk
// (sink_broker/message_edit.h).
//
// Input: [0] event type (its value mod 18), [1] flags (1 after COMMIT,
// 2 read-write access, 4 read access, 8 the binding discards, 16 SMTPUTF8
// envelope), [2..3] the message's length L (big-endian), then L octets of
// message, then a serialized sinkline.v1.Verdict.
//
// Invariants checked (a violation aborts): an accepted verdict's edits each
// pass ValidateEdit / ValidateEnvelopeEdit; the envelope they leave holds
// valid mailboxes only; the header edits applied in memory and the
// rewritten file agree: the file parses back to the same fields (so no
// edit turns body into header or header into body), its body is the
// replaced body or the original one, and the size RewriteMessage returns
// is the file's; a range write gives what a model of it gives.
#include <fcntl.h>
#include <google/protobuf/stubs/logging.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "sink_broker/message_edit.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/address.h"

namespace sinkline::broker {
namespace {

[[noreturn]] void Violation(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "verdict_fuzz: invariant violated: %s: %.600s\n", what,
               detail.c_str());
  std::abort();
}

const std::string& Dir() {
  static const std::string dir = [] {
    std::string t = (std::filesystem::temp_directory_path() /
                     "sinkline-verdict-fuzz-XXXXXX")
                        .string();
    if (::mkdtemp(t.data()) == nullptr) Violation("mkdtemp");
    return t;
  }();
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

void CheckEdits(const std::string& message, const v1::Verdict& verdict) {
  std::vector<v1::ContentEdit> edits(verdict.content_edits().begin(),
                                     verdict.content_edits().end());
  bool ranges = false;
  for (const auto& e : edits) {
    if (!ValidateEdit(e).ok()) Violation("accepted edit fails ValidateEdit");
    ranges = ranges || e.has_write_range();
  }
  const std::string in = Dir() + "/in", out = Dir() + "/out";
  {
    std::ofstream f(in, std::ios::binary | std::ios::trunc);
    f << message;
  }
  auto size = RewriteMessage(in, out, edits);
  if (!size.ok()) {
    if (size.status().message().empty()) Violation("error without a reason");
    return;
  }
  const std::string got = ReadFile(out);
  if (*size != got.size()) Violation("size differs from the file's");
  if (ranges) {
    if (edits.size() == 1) {
      // The model of one range write.
      const auto& w = edits[0].write_range();
      std::string want = message;
      if (w.offset() > want.size()) Violation("write past the end taken");
      if (want.size() < w.offset() + w.data().size()) {
        want.resize(w.offset() + w.data().size());
      }
      want.replace(w.offset(), w.data().size(), w.data());
      if (w.truncate()) want.resize(w.offset() + w.data().size());
      if (got != want) Violation("range write", got);
    }
    return;
  }
  // Header edits: the file agrees with the edits applied in memory.
  ParsedHeader h = ParseHeader(message);
  const std::string* new_body = nullptr;
  if (!ApplyHeaderEdits(edits, h, &new_body).ok()) {
    Violation("RewriteMessage took what ApplyHeaderEdits refused");
  }
  const ParsedHeader back = ParseHeader(got);
  bool same = back.fields.size() == h.fields.size();
  for (size_t i = 0; same && i < h.fields.size(); ++i) {
    same = back.fields[i].name == h.fields[i].name &&
           (back.fields[i].raw == h.fields[i].raw ||
            back.fields[i].raw == h.fields[i].raw + "\r\n");
  }
  if (!same) Violation("the rewritten header parses otherwise", got);
  const std::string body = got.substr(back.body_offset);
  const std::string want_body =
      new_body != nullptr ? *new_body
                          : message.substr(ParseHeader(message).body_offset);
  if (body != want_body) Violation("the body changed", got);
}

void Run(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const size_t len = std::min<size_t>((data[2] << 8) | data[3], size - 4);
  const std::string message(reinterpret_cast<const char*>(data) + 4, len);
  v1::Verdict verdict;
  if (!verdict.ParseFromArray(data + 4 + len,
                              static_cast<int>(size - 4 - len))) {
    return;
  }
  const uint8_t flags = data[1];
  v1::Event event;
  event.set_type(static_cast<v1::EventType>(data[0] % 18));
  event.mutable_envelope()->set_mail_from("a@example.test");
  event.mutable_envelope()->add_recipients()->set_address("b@example.test");
  if (flags & 16) {
    auto* p = event.mutable_envelope()->add_mail_params();
    p->set_key("SMTPUTF8");
  }
  v1::Binding binding;
  binding.set_name("fuzz");
  binding.set_content_access(flags & 2   ? v1::CONTENT_ACCESS_READ_WRITE
                             : flags & 4 ? v1::CONTENT_ACCESS_READ
                                         : v1::CONTENT_ACCESS_NONE);
  binding.set_discard(flags & 8);
  const bool after_commit = flags & 1;
  if (!ValidateVerdict(event, binding, after_commit, verdict).ok()) return;
  if (verdict.has_reply() && verdict.reply().code() != 0 &&
      !ValidateReply(verdict.reply()).ok()) {
    Violation("accepted verdict with a bad reply");
  }
  const bool utf8 = EnvelopeIsUtf8(event.envelope());
  for (const auto& e : verdict.envelope_edits()) {
    if (!ValidateEnvelopeEdit(e, utf8).ok()) Violation("envelope edit");
  }
  v1::Envelope env = event.envelope();
  ApplyEnvelopeEdits(verdict.envelope_edits(), env);
  if (!env.mail_from().empty() && !ValidMailbox(env.mail_from(), utf8)) {
    Violation("invalid sender after the edits", env.mail_from());
  }
  for (const auto& r : env.recipients()) {
    if (!ValidMailbox(r.address(), utf8)) {
      Violation("invalid recipient after the edits", r.address());
    }
  }
  if (verdict.content_edits_size() > 0) CheckEdits(message, verdict);
}

}  // namespace
}  // namespace sinkline::broker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Strings that are not UTF-8 are what fuzzing makes; protobuf's log of
  // each would drown the output.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  sinkline::broker::Run(data, size);
  return 0;
}
