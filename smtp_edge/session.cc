#include "smtp_edge/session.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"
#include "smtp_edge/commands.h"

namespace sinkline::edge {

using google::protobuf::util::TimeUtil;
namespace {

std::string NewId() {
  static const char kHex[] = "0123456789abcdef";
  static thread_local uint64_t state =
      static_cast<uint64_t>(
          std::chrono::steady_clock::now().time_since_epoch().count()) ^
      reinterpret_cast<uintptr_t>(&state);
  std::string id;
  for (int round = 0; round < 2; ++round) {
    // splitmix64: ids need to be unique, not secret.
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    for (int i = 0; i < 16; ++i) id += kHex[(z >> (i * 4)) & 0xf];
  }
  return id;
}

}  // namespace

Session::Session(SessionLimits limits, SessionPolicy policy,
                 v1::SessionInfo info, SessionOutput* out)
    : limits_(limits),
      policy_(std::move(policy)),
      info_(std::move(info)),
      out_(out) {}

const std::string& Session::state_name() const {
  static const std::string kNames[] = {"GREETING", "INIT", "READY", "MAIL",
                                       "RCPT",     "DATA", "CLOSED"};
  if (closed_) return kNames[6];
  if (!started_) return kNames[0];
  if (mode_ == Mode::kData || mode_ == Mode::kBdat) return kNames[5];
  if (!recipients_.empty()) return kNames[4];
  if (mail_from_) return kNames[3];
  if (!info_.helo_name().empty()) return kNames[2];
  return kNames[1];
}

void Session::SetBindingMap(const v1::BindingMap& map) {
  bindings_ = map;
  bound_.assign(v1::EventType_ARRAYSIZE, false);
  for (int e : map.events()) {
    if (e >= 0 && e < v1::EventType_ARRAYSIZE) bound_[e] = true;
  }
}

bool Session::Bound(v1::EventType type, const std::string& verb) const {
  if (type == v1::EVENT_TYPE_EOD) return true;  // COMMIT is the broker's
  if (type == v1::EVENT_TYPE_UNKNOWN) {
    for (const auto& v : bindings_.verbs()) {
      if (v == verb) return true;
    }
    return false;
  }
  return type < static_cast<int>(bound_.size()) && bound_[type];
}

void Session::CountReply(int code) const {
  static constexpr const char* kClasses[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  const int cls = code / 100;
  MetricsRegistry::Default()
      .GetCounter(
          "sinkline_edge_commands_total",
          "SMTP commands by verb and the class of the reply they got "
          "(CONNECT: the greeting; EOD: the reply after the "
          "message).",
          {{"verb", metric_verb_},
           {"reply", cls >= 1 && cls <= 5 ? kClasses[cls - 1] : "other"}})
      .Inc();
}

void Session::Reply(const edge::Reply& r) {
  CountReply(r.code);
  out_->Write(r.Format());
  if (r.code >= 500 && ++errors_ >= limits_.max_errors &&
      limits_.max_errors > 0 && !closed_) {
    CloseAfter(MakeReply(
        421, "4.7.0",
        absl::StrCat(info_.server_hostname(), " Error: too many errors")));
  }
}

void Session::CloseAfter(const edge::Reply& r) {
  CountReply(r.code);
  out_->Write(r.Format());
  closed_ = true;
  out_->Close();
}

void Session::SetDraining() {
  draining_ = true;
  CloseIfDrained();
}

bool Session::CloseIfDrained() {
  if (!draining_ || !started_ || closed_ || pending_ || starting_tls_ ||
      mode_ != Mode::kCommand || mail_from_) {
    return false;
  }
  CloseAfter(MakeReply(421, "4.3.2",
                       absl::StrCat(info_.server_hostname(),
                                    " Service shutting down, closing "
                                    "transmission channel")));
  return true;
}

bool Session::RelayAllowed(const std::string& address) const {
  const std::string domain = MailboxDomain(address);
  if (domain.empty()) return true;  // "postmaster" is always local
  for (const auto& d : policy_.accepted_domains) {
    if (d == domain) return true;
  }
  return TrustedClient();
}

bool Session::TrustedClient() const {
  return policy_.trusted_client || !info_.auth_identity().empty();
}

bool Session::Smtputf8() const {
  for (const auto& p : mail_params_) {
    if (p.key() == "SMTPUTF8") return true;
  }
  return false;
}

void Session::ResetTransaction() {
  bdat_used_ = false;
  mail_from_.reset();
  mail_params_.clear();
  recipients_.clear();
  transaction_id_.clear();
}

v1::Event Session::MakeEvent(v1::EventType type, const Command& cmd,
                             const edge::Reply& native) {
  v1::Event ev;
  ev.set_type(type);
  ev.set_sequence(++sequence_);
  *ev.mutable_session() = info_;
  ev.set_transaction_id(transaction_id_);
  ev.set_verb(cmd.verb);
  ev.set_argument(cmd.argument);
  auto* env = ev.mutable_envelope();
  if (mail_from_) env->set_mail_from(*mail_from_);
  for (const auto& p : mail_params_) *env->add_mail_params() = p;
  for (const auto& r : recipients_) *env->add_recipients() = r;
  *ev.mutable_native_reply() = native.ToProto();
  *ev.mutable_time() = sinkline::NowTimestamp();
  return ev;
}

void Session::Start() {
  started_ = true;
  if (!in_.empty()) {
    // An early talker: a real client waits for the greeting.
    in_.clear();
    CloseAfter(MakeReply(554, "5.5.1",
                         absl::StrCat(info_.server_hostname(),
                                      " Error: input before the greeting")));
    return;
  }
  if (draining_) {
    SetDraining();
    return;
  }
  const edge::Reply greeting = MakeReply(
      220, "", absl::StrCat(info_.server_hostname(), " ESMTP Sinkline"));
  Dispatch(&kConnectEvent, Command{},
           MakeEvent(v1::EVENT_TYPE_CONNECT, {}, greeting), greeting);
  Process();
}

void Session::Dispatch(const CommandSpec* spec, const Command& cmd,
                       v1::Event event, const edge::Reply& native) {
  Pending p{event.sequence(), spec, cmd, native};
  if (Bound(event.type(), cmd.verb)) {
    out_->SendEvent(event, /*notify_only=*/false);
    pending_ = std::move(p);
    return;
  }
  out_->SendEvent(event, /*notify_only=*/true);
  Proceed(p, native, false);
}

void Session::Proceed(const Pending& p, const edge::Reply& resolved,
                      bool close_session) {
  if (p.spec->event == v1::EVENT_TYPE_DATA && resolved.code == 354 &&
      limits_.reject_improper_pipelining && !in_.empty() && !close_session) {
    // The client sent on without waiting for the 354: what it sent cannot
    // be told apart from content.
    in_.clear();
    ResetTransaction();
    CloseAfter(MakeReply(554, "5.5.0",
                         "Error: improper command pipelining after DATA"));
    return;
  }
  if (p.spec->proceed) p.spec->proceed(*this, p.command, resolved);
  if (p.spec == &kEodEvent) ResetTransaction();
  // A MAIL refused (by the edge or by a sink) started no transaction: the
  // events after it carry no transaction id.
  if (p.spec->event == v1::EVENT_TYPE_MAIL && !mail_from_) {
    transaction_id_.clear();
  }
  const bool greeting_refused =
      p.spec == &kConnectEvent && resolved.code != 220;
  if (close_session || greeting_refused ||
      (p.spec->event == v1::EVENT_TYPE_QUIT && resolved.code == 221)) {
    CloseAfter(resolved);
    return;
  }
  Reply(resolved);
  if (CloseIfDrained()) return;
  if (starting_tls_) {
    // Plaintext sent after STARTTLS must not count as sent over TLS
    // (CVE-2011-0411): drop it.
    in_.clear();
    out_->StartTls();
  }
}

void Session::OnTlsStarted(const v1::TlsState& tls) {
  starting_tls_ = false;
  *info_.mutable_tls() = tls;
  // RFC 3207 §4.2: forget what the client said before TLS.
  info_.clear_helo_name();
  info_.set_esmtp(false);
  info_.clear_auth_identity();
  ResetTransaction();
  in_.clear();
  discarding_line_ = false;
  mode_ = Mode::kCommand;
  Process();
}

void Session::OnResult(const v1::EventResult& result) {
  if (!pending_ || result.sequence() != pending_->sequence) return;
  Pending p = std::move(*pending_);
  pending_.reset();
  edge::Reply resolved = Reply::FromProto(result.reply());
  if (resolved.code == 0) {
    // At EOD the native reply is the broker's COMMIT: an answer without a
    // code is a broken broker answer, never "250 Ok".
    resolved = p.spec == &kEodEvent
                   ? MakeReply(451, "4.3.0",
                               "Error: queue answer broken, message not "
                               "accepted")
                   : p.native;
  }
  Proceed(p, resolved, result.close_session());
  if (result.has_envelope() && mail_from_) {
    // Sinks edited the envelope.
    const auto& env = result.envelope();
    mail_from_ = env.mail_from();
    std::vector<v1::Recipient> rcpts(env.recipients().begin(),
                                     env.recipients().end());
    if (p.spec->event == v1::EVENT_TYPE_RCPT && resolved.positive() &&
        !recipients_.empty()) {
      rcpts.push_back(recipients_.back());
    }
    recipients_ = std::move(rcpts);
  }
  Process();
}

void CountBrokerUnavailable(const char* when) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_edge_broker_unavailable_total",
                  "Sessions answered 421/451 for lack of a broker (connect: "
                  "none at the greeting; lost: the stream broke).",
                  {{"when", when}})
      .Inc();
}

void Session::OnBrokerLost() {
  if (broker_lost_ || closed_) return;
  broker_lost_ = true;
  CountBrokerUnavailable("lost");
  if (!pending_) return;  // the next command gets 421
  const bool eod = pending_->spec == &kEodEvent;
  pending_.reset();
  if (eod) {
    Reply(MakeReply(451, "4.3.0",
                    "Error: queue unavailable, message not accepted"));
    ResetTransaction();
  } else {
    Reply(MakeReply(451, "4.3.0", "Error: service unavailable, try again"));
  }
  Process();
}

void Session::Feed(absl::string_view bytes) {
  if (closed_ || starting_tls_) return;
  in_.append(bytes.data(), bytes.size());
  Process();
}

size_t Session::CommandLineLimit() const {
  // RFC 4954 §4: an AUTH command with its initial response, and each SASL
  // response, may take up to 12288 octets.
  constexpr size_t kAuthLine = 12288;
  if (policy_.credentials != nullptr &&
      (mode_ == Mode::kAuth || absl::StartsWithIgnoreCase(in_, "AUTH "))) {
    return std::max(limits_.max_line_length, kAuthLine);
  }
  return limits_.max_line_length;
}

void Session::Process() {
  while (!closed_ && !pending_ && started_ && !starting_tls_) {
    if (CloseIfDrained()) return;
    if (mode_ == Mode::kData) {
      if (!ProcessData()) return;
      continue;
    }
    if (mode_ == Mode::kBdat) {
      if (!ProcessBdat()) return;
      continue;
    }
    const size_t limit = CommandLineLimit();
    const size_t lf = in_.find('\n');
    if (lf == std::string::npos) {
      if (in_.size() > limit) {
        // Drop what cannot be a command; answer when the line ends.
        discarding_line_ = true;
        in_.clear();
      }
      return;
    }
    std::string line = in_.substr(0, lf + 1);
    in_.erase(0, lf + 1);
    if (discarding_line_ || line.size() > limit) {
      discarding_line_ = false;
      Reply(MakeReply(500, "5.5.2", "Error: line too long"));
      continue;
    }
    if (line.size() < 2 || line[line.size() - 2] != '\r') {
      if (!limits_.normalize_bare_lf) {
        Reply(MakeReply(500, "5.5.2",
                        "Error: bare LF in command; lines must end with CRLF"));
        continue;
      }
      line.resize(line.size() - 1);
    } else {
      line.resize(line.size() - 2);
    }
    if (line.find('\r') != std::string::npos) {
      Reply(MakeReply(500, "5.5.2",
                      "Error: bare CR in command; lines must end with CRLF"));
      continue;
    }
    HandleLine(line);
  }
}

void Session::HandleLine(absl::string_view line) {
  if (broker_lost_) {
    CloseAfter(MakeReply(421, "4.3.0",
                         absl::StrCat(info_.server_hostname(),
                                      " Service not available, closing "
                                      "transmission channel")));
    return;
  }
  if (mode_ == Mode::kAuth) {
    AuthResponse(line);
    return;
  }
  HandleCommand(ParseCommand(line));
}

void Session::AuthResponse(absl::string_view line) {
  auto fail = [this](int code, const char* enhanced, const char* text) {
    mode_ = Mode::kCommand;
    auth_ = {};
    Reply(MakeReply(code, enhanced, text));
  };
  if (line == "*") return fail(501, "5.0.0", "Authentication cancelled");
  std::string decoded;
  if (!absl::Base64Unescape(line, &decoded)) {
    return fail(501, "5.5.2", "Error: invalid base64 data");
  }
  if (auth_.mechanism == "PLAIN") {
    // authzid NUL authcid NUL passwd
    const size_t a = decoded.find('\0');
    const size_t b = a == std::string::npos ? a : decoded.find('\0', a + 1);
    if (b == std::string::npos ||
        decoded.find('\0', b + 1) != std::string::npos) {
      return fail(501, "5.5.2", "Error: malformed PLAIN response");
    }
    FinishAuth(decoded.substr(0, a), decoded.substr(a + 1, b - a - 1),
               decoded.substr(b + 1));
    return;
  }
  if (!auth_.got_user) {
    auth_.user = std::move(decoded);
    auth_.got_user = true;
    Reply(MakeReply(334, "", "UGFzc3dvcmQ6"));  // "Password:"
    return;
  }
  FinishAuth("", auth_.user, decoded);
}

void Session::FinishAuth(const std::string& authzid, const std::string& user,
                         const std::string& password) {
  mode_ = Mode::kCommand;
  auth_.user = user;
  bool printable = !user.empty();
  for (unsigned char ch : user) {
    if (ch < 0x21 || ch == 0x7f) printable = false;
  }
  // Acting for another identity (authzid) is not offered.
  auth_.ok = printable && (authzid.empty() || authzid == user) &&
             policy_.credentials->Check(user, password);
  const edge::Reply native =
      auth_.ok ? MakeReply(235, "2.7.0", "Authentication successful")
               : MakeReply(535, "5.7.8", "Authentication credentials invalid");
  // The event names the mechanism and the identity, never the secret.
  const Command cmd{"AUTH",
                    absl::StrCat(auth_.mechanism, " ", absl::CHexEscape(user))};
  v1::Event event = MakeEvent(v1::EVENT_TYPE_AUTH, cmd, native);
  if (auth_.ok) event.mutable_session()->set_auth_identity(user);
  Dispatch(FindCommand("AUTH"), cmd, std::move(event), native);
}

void Session::HandleCommand(const Command& cmd) {
  const CommandSpec* spec = FindCommand(cmd.verb);
  metric_verb_ = spec != nullptr ? spec->verb : "UNKNOWN";
  if (spec == nullptr) {
    const edge::Reply unknown =
        MakeReply(500, "5.5.2", "Error: command not recognized");
    if (!cmd.verb.empty() && Bound(v1::EVENT_TYPE_UNKNOWN, cmd.verb)) {
      Dispatch(&kUnknownCommand, cmd,
               MakeEvent(v1::EVENT_TYPE_UNKNOWN, cmd, unknown), unknown);
    } else {
      Reply(unknown);
    }
    return;
  }
  bool to_broker = true;
  edge::Reply native = spec->check(*this, cmd, to_broker);
  if (mode_ == Mode::kBdat) return;  // answered once the chunk is in
  if (!to_broker) {
    if (mode_ == Mode::kAuth && auth_.has_initial) {
      auth_.has_initial = false;
      AuthResponse(std::exchange(auth_.initial, ""));
      return;
    }
    Reply(native);
    return;
  }
  if (spec->event == v1::EVENT_TYPE_MAIL) transaction_id_ = NewId();
  v1::Event event = MakeEvent(spec->event, cmd, native);
  if (spec->event == v1::EVENT_TYPE_MAIL) {
    // The sender at hand, so that rules on MAIL can see it.
    auto path = ParsePathArgument(cmd.argument, "FROM:", true);
    event.mutable_envelope()->set_mail_from(path->address);
    for (const auto& [k, v] : path->params) {
      auto* p = event.mutable_envelope()->add_mail_params();
      p->set_key(k);
      p->set_value(v);
    }
  } else if (spec->event == v1::EVENT_TYPE_RCPT) {
    auto path = ParsePathArgument(cmd.argument, "TO:", false);
    event.mutable_recipient()->set_address(path->address);
    for (const auto& [k, v] : path->params) {
      auto* p = event.mutable_recipient()->add_params();
      p->set_key(k);
      p->set_value(v);
    }
  }
  Dispatch(spec, cmd, std::move(event), native);
  if (spec->event == v1::EVENT_TYPE_MAIL && !mail_from_ && !pending_) {
    transaction_id_.clear();  // refused at once
  }
}

}  // namespace sinkline::edge
