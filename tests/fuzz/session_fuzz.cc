// Fuzz target for the SMTP command parser and the session state machine.
//
// Input: an 8-octet header, then the bytes a client sends.
//   [0] flags: 1 STARTTLS offered, 2 AUTH credentials, 4 trusted client,
//       8 example.test accepted, 16 small limits, 32 drain at some point,
//       64 the broker may be lost, 128 the client talks before the greeting
//   [1..2] which event types are bound (bit n: EventType n), bit 15 also
//       binds the verb XSTATUS
//   [3] how often a sink replaces the native reply (0: never, 255: always)
//   [4..7] seed of the choices below (feed sizes, replies, when to drain)
// The fake broker answers every pending event right after each Feed, with
// the native reply or a reply the broker would let through (2xx, 4xx or 5xx
// with an enhanced code, text without CR or LF), sometimes closing the
// session or editing the envelope; a STARTTLS 220 gets its handshake.
//
// Invariants checked (a violation aborts): every write is one reply, each
// line `ddd[ -]text CRLF` with one code and '-' on all lines but the last;
// nothing is written, sent or closed after Close(); at most one event waits
// for its result, and nothing at all is sent while it waits; sequences
// increase; message data belongs to the open transaction; STARTTLS starts
// only right after a 220; with no event waiting, the session holds no more
// input than one line. DATA content is checked against a model of its
// rules written apart (ModelData): it ends exactly at the first
// <CRLF>.<CRLF>, reaches the broker unstuffed and unchanged when it is
// acceptable, and is refused with 552 (too big) or 550 (bare CR or LF, line
// over the limit) when it is not.
#include <crypt.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iterator>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "smtp_edge/parser.h"
#include "smtp_edge/policy.h"
#include "smtp_edge/session.h"

namespace sinkline::edge {
namespace {

[[noreturn]] void Violation(const char* what, absl::string_view detail) {
  std::fprintf(stderr, "session_fuzz: invariant violated: %s: %.*s\n", what,
               static_cast<int>(std::min<size_t>(detail.size(), 400)),
               detail.data());
  std::abort();
}

// SINKLINE_FUZZ_TRACE=1 prints the client's input, every reply and every
// event (to read a failing input).
bool Trace() {
  static const bool on = std::getenv("SINKLINE_FUZZ_TRACE") != nullptr;
  return on;
}

// splitmix64 over the header's seed: the choices come from the input.
class Choices {
 public:
  explicit Choices(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // True with probability n/256.
  bool Chance(unsigned n) { return (Next() & 0xff) < n; }
  size_t Below(size_t n) { return n == 0 ? 0 : Next() % n; }

 private:
  uint64_t state_;
};

// Checks that `bytes` is exactly one SMTP reply.
void CheckReply(absl::string_view bytes) {
  if (bytes.empty()) Violation("empty write", bytes);
  absl::string_view rest = bytes;
  absl::string_view code;
  while (!rest.empty()) {
    const size_t crlf = rest.find("\r\n");
    if (crlf == absl::string_view::npos) Violation("no CRLF", bytes);
    const absl::string_view line = rest.substr(0, crlf);
    rest.remove_prefix(crlf + 2);
    if (line.size() < 4) Violation("short reply line", bytes);
    for (int i = 0; i < 3; ++i) {
      if (line[i] < '0' || line[i] > '9') Violation("code not ddd", bytes);
    }
    if (line[0] < '2' || line[0] > '5') Violation("code class", bytes);
    if (code.empty()) code = line.substr(0, 3);
    if (line.substr(0, 3) != code) Violation("codes differ", bytes);
    if (line[3] != ' ' && line[3] != '-') Violation("no [ -]", bytes);
    if (line.find_first_of("\r\n") != absl::string_view::npos) {
      Violation("CR or LF in reply text", bytes);
    }
    if ((line[3] == ' ') != rest.empty()) {
      Violation("continuation marks", bytes);
    }
  }
}

// The DATA content rules (RFC 5321 §4.1.1.4, §4.5.2, §4.5.3.1.6), written
// apart from the session: where the content that starts at `start` ends,
// what it is once unstuffed, and the reply the session owes for it.
struct DataModel {
  size_t end = std::string::npos;  // after the terminating ".\r\n"
  std::string unstuffed;
  int code = 0;  // 0: EOD (accepted by the edge), else 550 or 552
};

DataModel ModelData(absl::string_view stream, size_t start,
                    const SessionLimits& limits) {
  DataModel m;
  const absl::string_view rest = stream.substr(start);
  size_t content_end;  // the content, without the final ".\r\n"
  if (absl::StartsWith(rest, ".\r\n")) {
    content_end = 0;
  } else {
    const size_t t = rest.find("\r\n.\r\n");
    if (t == absl::string_view::npos) return m;
    content_end = t + 2;
  }
  m.end = start + content_end + 3;
  const absl::string_view content = rest.substr(0, content_end);
  bool bare = false, too_long = false;
  size_t line_start = 0;
  for (size_t i = 0; i < content.size(); ++i) {
    const char c = content[i];
    if (c == '\r' && (i + 1 == content.size() || content[i + 1] != '\n')) {
      bare = true;
    }
    if (c == '\n') {
      if (i == 0 || content[i - 1] != '\r') bare = true;
      if (i + 1 - line_start > limits.max_text_line) too_long = true;
      absl::string_view line = content.substr(line_start, i + 1 - line_start);
      if (absl::StartsWith(line, ".")) line.remove_prefix(1);
      m.unstuffed.append(line.data(), line.size());
      line_start = i + 1;
    }
  }
  if (m.unstuffed.size() > limits.max_message_size) {
    m.code = 552;
  } else if (bare || too_long) {
    m.code = 550;
  }
  return m;
}

class FakeBroker : public SessionOutput {
 public:
  FakeBroker(Choices* choices, unsigned replace, const SessionLimits& limits)
      : choices_(choices), replace_(replace), limits_(limits) {}

  // The session and every octet fed to it, to check DATA against the model.
  void Watch(const Session* s) { session_ = s; }
  void Fed(absl::string_view bytes) { fed_.append(bytes.data(), bytes.size()); }

  void Write(std::string bytes) override {
    if (Trace()) std::fprintf(stderr, "S: %s", bytes.c_str());
    if (closed_) Violation("write after close", bytes);
    CheckReply(bytes);
    last_reply_code_ = bytes.substr(0, 3);
    if (in_data_) {
      // The first reply after 354 without an EOD: the edge refused the
      // content (or lost the broker) once it was read to its end.
      in_data_ = false;
      const DataModel m = ModelData(fed_, data_start_, limits_);
      if (m.end != Consumed()) Violation("DATA ended elsewhere", bytes);
      const int code = std::stoi(last_reply_code_);
      if (code != 451 && code != m.code) {
        Violation("content refused against the rules", bytes);
      }
    }
    if (last_reply_code_ == "354") {
      in_data_ = true;
      data_start_ = Consumed();
      data_.clear();
    }
  }
  void SendEvent(const v1::Event& event, bool notify_only) override {
    if (Trace()) {
      std::fprintf(
          stderr, "E: %s%s tx=%s\n", v1::EventType_Name(event.type()).c_str(),
          notify_only ? " (notify)" : "", event.transaction_id().c_str());
    }
    if (closed_) Violation("event after close", event.ShortDebugString());
    if (!waiting_.empty()) {
      Violation("event while another waits", event.ShortDebugString());
    }
    if (event.sequence() <= last_sequence_ && last_sequence_ != 0) {
      Violation("sequence did not increase", event.ShortDebugString());
    }
    last_sequence_ = event.sequence();
    if (event.session().server_hostname() != "mx.example.test") {
      Violation("event without the session", event.ShortDebugString());
    }
    // A refused message's data has no EOD; the broker drops it when the
    // next transaction starts.
    if (event.type() == v1::EVENT_TYPE_MAIL) data_tx_.clear();
    if (event.type() == v1::EVENT_TYPE_EOD) {
      if (notify_only) Violation("EOD notify-only", event.ShortDebugString());
      if (event.transaction_id().empty() ||
          (!data_tx_.empty() && event.transaction_id() != data_tx_)) {
        Violation("EOD for another transaction", event.ShortDebugString());
      }
      data_tx_.clear();
      if (in_data_) {
        in_data_ = false;
        const DataModel m = ModelData(fed_, data_start_, limits_);
        if (m.end != Consumed()) Violation("DATA ended elsewhere", "EOD");
        if (m.code != 0) Violation("content accepted against the rules", "");
        if (data_ != m.unstuffed) Violation("content changed", data_);
      }
    }
    if (!notify_only) waiting_.push_back(event);
  }
  void SendData(const std::string& tx, std::string chunk) override {
    if (closed_) Violation("data after close", chunk);
    if (!waiting_.empty()) Violation("data while an event waits", chunk);
    if (tx.empty()) Violation("data without a transaction", chunk);
    if (chunk.empty()) Violation("empty data chunk", tx);
    if (!data_tx_.empty() && data_tx_ != tx) {
      Violation("data of two transactions without a MAIL between", tx);
    }
    data_tx_ = tx;
    if (in_data_) data_ += chunk;
  }
  void Close() override {
    if (closed_) Violation("closed twice", "");
    closed_ = true;
  }
  void StartTls() override {
    if (closed_) Violation("STARTTLS after close", "");
    if (last_reply_code_ != "220") {
      Violation("STARTTLS without a 220", last_reply_code_);
    }
    tls_requested_ = true;
  }

  // Answers what waits and completes a requested handshake, until nothing
  // is left.
  void AnswerAll(Session& s, bool may_lose_broker) {
    while (!waiting_.empty() || (tls_requested_ && s.starting_tls())) {
      if (waiting_.empty()) {
        tls_requested_ = false;
        v1::TlsState tls;
        tls.set_active(true);
        tls.set_version("TLSv1.3");
        tls.set_cipher("TLS_AES_256_GCM_SHA384");
        s.OnTlsStarted(tls);
        continue;
      }
      if (may_lose_broker && choices_->Chance(4)) {
        waiting_.clear();
        s.OnBrokerLost();
        continue;
      }
      const v1::Event e = waiting_.front();
      waiting_.pop_front();
      v1::EventResult r;
      r.set_sequence(e.sequence());
      if (choices_->Chance(replace_)) {
        *r.mutable_reply() = SinkReply();
        r.set_close_session(r.reply().code() == 421 && choices_->Chance(128));
      } else {
        *r.mutable_reply() = e.native_reply();
        if (e.type() == v1::EVENT_TYPE_EOD) {
          r.mutable_reply()->clear_lines();
          r.mutable_reply()->add_lines("Ok: queued as Q" +
                                       std::to_string(++queued_));
        }
        // The native reply may also come back empty (code 0).
        if (choices_->Chance(16)) r.clear_reply();
      }
      if ((e.type() == v1::EVENT_TYPE_RCPT ||
           e.type() == v1::EVENT_TYPE_MAIL) &&
          choices_->Chance(16)) {
        // A sink edited the envelope.
        auto* env = r.mutable_envelope();
        env->set_mail_from("edited@example.test");
        for (size_t i = choices_->Below(3); i > 0; --i) {
          env->add_recipients()->set_address("r" + std::to_string(i) +
                                             "@example.test");
        }
      }
      s.OnResult(r);
    }
  }

  bool closed() const { return closed_; }

 private:
  // A reply the broker's validation lets through.
  v1::Reply SinkReply() {
    static const int kCodes[] = {211, 214, 220, 221, 235, 250, 251, 252,
                                 421, 450, 451, 452, 454, 500, 501, 502,
                                 503, 504, 530, 535, 550, 552, 553, 554};
    v1::Reply r;
    const int code = kCodes[choices_->Below(std::size(kCodes))];
    r.set_code(code);
    r.set_enhanced_code(std::to_string(code / 100) + "." +
                        std::to_string(choices_->Below(8)) + "." +
                        std::to_string(choices_->Below(30)));
    for (size_t i = 0, n = 1 + choices_->Below(3); i < n; ++i) {
      std::string text;
      for (size_t j = 0, m = choices_->Below(40); j < m; ++j) {
        char c = static_cast<char>(choices_->Below(256));
        if (c == '\r' || c == '\n') c = ' ';
        text += c;
      }
      r.add_lines(text);
    }
    return r;
  }

  size_t Consumed() const { return fed_.size() - session_->buffered(); }

  Choices* choices_;
  const unsigned replace_;
  const SessionLimits limits_;
  const Session* session_ = nullptr;
  std::string fed_;       // every octet the client sent
  bool in_data_ = false;  // after a 354, until the content's answer
  size_t data_start_ = 0;
  std::string data_;  // DataChunks since the 354
  std::deque<v1::Event> waiting_;
  uint64_t last_sequence_ = 0;
  std::string data_tx_;
  std::string last_reply_code_;
  bool closed_ = false;
  bool tls_requested_ = false;
  int queued_ = 0;
};

const Credentials& TestCredentials() {
  static const Credentials creds = [] {
    // MD5-crypt: cheap enough to check thousands of times a second.
    struct crypt_data data = {};
    const char* hash = crypt_r("secret", "$1$fuzzsalt$", &data);
    auto c = Credentials::Parse(std::string("alice:") + hash + "\n");
    if (!c.ok()) Violation("credentials", c.status().ToString());
    return *std::move(c);
  }();
  return creds;
}

void Run(const uint8_t* data, size_t size) {
  if (size < 8) return;
  const uint8_t flags = data[0];
  const unsigned bound = data[1] | (data[2] << 8);
  const unsigned replace = data[3];
  uint64_t seed = 0;
  for (int i = 4; i < 8; ++i) seed = (seed << 8) | data[i];
  absl::string_view input(reinterpret_cast<const char*>(data) + 8, size - 8);
  Choices choices(seed);

  SessionLimits limits;
  if (flags & 16) {
    limits.max_line_length = 64;
    limits.max_text_line = 80;
    limits.max_message_size = 2000;
    limits.max_recipients = 3;
    limits.chunk_size = 16;
    limits.max_errors = 5;
  }
  SessionPolicy policy;
  policy.starttls = flags & 1;
  if (flags & 2) policy.credentials = &TestCredentials();
  policy.trusted_client = flags & 4;
  if (flags & 8) policy.accepted_domains = {"example.test"};

  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  info.mutable_client()->set_ip("192.0.2.1");
  FakeBroker broker(&choices, replace, limits);
  Session s(limits, policy, info, &broker);
  broker.Watch(&s);
  v1::BindingMap map;
  for (int e = 1; e < 15; ++e) {
    if (bound & (1u << e)) map.add_events(static_cast<v1::EventType>(e));
  }
  if (bound & (1u << 15)) map.add_verbs("XSTATUS");
  s.SetBindingMap(map);

  const bool may_lose_broker = flags & 64;
  const bool drain = flags & 32;
  if (flags & 128) {
    const size_t n = std::min<size_t>(input.size(), 1 + choices.Below(8));
    broker.Fed(input.substr(0, n));
    s.Feed(input.substr(0, n));
    input.remove_prefix(n);
  }
  s.Start();
  broker.AnswerAll(s, may_lose_broker);
  while (!input.empty()) {
    // One octet at a time, a line's worth, or a lot at once.
    size_t n = 1;
    switch (choices.Below(4)) {
      case 0:
        break;
      case 1:
        n = 1 + choices.Below(16);
        break;
      case 2:
        n = 1 + choices.Below(256);
        break;
      default:
        n = input.size();
    }
    n = std::min(n, input.size());
    if (Trace()) {
      std::fprintf(stderr, "C: %s\n", std::string(input.substr(0, n)).c_str());
    }
    broker.Fed(input.substr(0, n));
    s.Feed(input.substr(0, n));
    input.remove_prefix(n);
    if (s.closed() != broker.closed()) {
      Violation("closed() and Close() disagree", "");
    }
    if (drain && choices.Chance(8)) s.SetDraining();
    broker.AnswerAll(s, may_lose_broker);
    if (s.waiting()) Violation("waits after every event was answered", "");
    // Input is only held while an event waits: otherwise at most a partial
    // command line (an AUTH line may be 12288 octets) or message line.
    const size_t bound =
        std::max({limits.max_line_length, limits.max_text_line, size_t{12288}});
    if (!s.closed() && !s.starting_tls() && s.buffered() > bound) {
      Violation("input held without bound", std::to_string(s.buffered()));
    }
  }
  if (s.closed() != broker.closed()) {
    Violation("closed() and Close() disagree", "");
  }
}

}  // namespace
}  // namespace sinkline::edge

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sinkline::edge::Run(data, size);
  return 0;
}
