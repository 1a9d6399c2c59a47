#include "session.h"

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

namespace sinkline::edge {

using google::protobuf::util::TimeUtil;

namespace {

edge::Reply Ok(const char* enhanced = "2.0.0", const char* text = "Ok") {
  return MakeReply(250, enhanced, text);
}

edge::Reply BadSequence(const char* text) {
  return MakeReply(503, "5.5.1", text);
}

bool HasNonAscii(absl::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 128;
  });
}

// The reply for an address that is not acceptable: a UTF-8 one without
// SMTPUTF8 (RFC 6531 §3.5) or plain bad syntax.
edge::Reply BadAddress(absl::string_view address, bool smtputf8,
                       const char* enhanced, const char* text) {
  if (!smtputf8 && HasNonAscii(address) && ValidMailbox(address, true)) {
    return MakeReply(553, "5.6.7",
                     "Error: non-ASCII address requires SMTPUTF8");
  }
  return MakeReply(501, enhanced, text);
}

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

// The command table: per verb, the event it raises, the check that gives
// the native reply (or answers at once), and the proceed step that applies
// the state change once the reply is resolved.
struct Session::CommandSpec {
  const char* verb;
  v1::EventType event;
  // Returns the native reply; clears `to_broker` when the edge answers on
  // its own (syntax and sequence errors never reach sinks).
  edge::Reply (*check)(Session& s, const Command& c, bool& to_broker);
  // Applies the state change for a resolved reply.
  void (*proceed)(Session& s, const Command& c, const edge::Reply& resolved);
};

struct CommandTable {
  static edge::Reply CheckHelo(Session& s, const Command& c, bool& to_broker) {
    if (c.argument.empty() ||
        c.argument.find_first_of(" \t") != std::string::npos) {
      to_broker = false;
      return MakeReply(501, "5.5.4",
                       absl::StrCat("Syntax: ", c.verb, " hostname"));
    }
    if (c.verb == "HELO") {
      return MakeReply(250, "", s.info_.server_hostname());
    }
    edge::Reply r;
    r.code = 250;
    r.lines = {
        absl::StrCat(s.info_.server_hostname(), " Hello ", c.argument),
        "PIPELINING",
        absl::StrCat("SIZE ", s.limits_.max_message_size),
        "8BITMIME",
        "SMTPUTF8",
        "DSN",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
    };
    if (s.policy_.starttls && !s.info_.tls().active()) {
      r.lines.push_back("STARTTLS");
    }
    if (s.policy_.credentials != nullptr && s.info_.tls().active() &&
        s.info_.auth_identity().empty()) {
      r.lines.push_back("AUTH PLAIN LOGIN");
    }
    return r;
  }
  static void ProceedHelo(Session& s, const Command& c,
                          const edge::Reply& resolved) {
    if (!resolved.positive()) return;
    s.ResetTransaction();
    s.info_.set_helo_name(c.argument);
    s.info_.set_esmtp(c.verb == "EHLO");
  }

  static edge::Reply CheckMail(Session& s, const Command& c, bool& to_broker) {
    to_broker = false;
    if (s.info_.helo_name().empty()) {
      return BadSequence("Error: send HELO/EHLO first");
    }
    if (s.mail_from_) return BadSequence("Error: nested MAIL command");
    auto path = ParsePathArgument(c.argument, "FROM:", /*allow_null=*/true);
    if (!path.ok()) {
      return MakeReply(501, "5.5.4", std::string(path.status().message()));
    }
    bool smtputf8 = false;
    std::set<std::string> seen;
    for (const auto& [key, value] : path->params) {
      if (!seen.insert(key).second) {
        return MakeReply(501, "5.5.4",
                         absl::StrCat("Duplicate parameter ", key));
      }
      if (key == "SMTPUTF8") {
        if (!value.empty()) {
          return MakeReply(501, "5.5.4", "SMTPUTF8 takes no value");
        }
        smtputf8 = true;
      } else if (key == "RET") {
        if (!ValidRet(value)) {
          return MakeReply(501, "5.5.4", "Bad RET parameter");
        }
      } else if (key == "ENVID") {
        if (value.empty() || value.size() > 100 || !ValidXtext(value)) {
          return MakeReply(501, "5.5.4", "Bad ENVID parameter");
        }
      } else if (key == "AUTH") {
        // RFC 4954 §5: the original submitter, kept as given.
        if (value != "<>" && (value.empty() || !ValidXtext(value))) {
          return MakeReply(501, "5.5.4", "Bad AUTH parameter");
        }
      } else if (key == "SIZE") {
        uint64_t size = 0;
        if (!absl::SimpleAtoi(value, &size)) {
          return MakeReply(501, "5.5.4", "Bad SIZE parameter");
        }
        if (size > s.limits_.max_message_size) {
          return MakeReply(552, "5.3.4", "Message size exceeds fixed limit");
        }
      } else if (key == "BODY") {
        const std::string v = absl::AsciiStrToUpper(value);
        if (v != "7BIT" && v != "8BITMIME") {
          return MakeReply(501, "5.5.4", "Bad BODY parameter");
        }
      } else {
        return MakeReply(555, "5.5.4",
                         absl::StrCat("Unsupported parameter ", key));
      }
    }
    if (!path->address.empty() && !ValidMailbox(path->address, smtputf8)) {
      return BadAddress(path->address, smtputf8, "5.1.7",
                        "Bad sender address syntax");
    }
    to_broker = true;
    return MakeReply(250, "2.1.0", "Ok");
  }
  static void ProceedMail(Session& s, const Command& c,
                          const edge::Reply& resolved) {
    if (!resolved.positive()) return;
    auto path = ParsePathArgument(c.argument, "FROM:", true);
    s.mail_from_ = path->address;
    s.mail_params_.clear();
    for (const auto& [k, v] : path->params) {
      v1::EsmtpParam p;
      p.set_key(k);
      p.set_value(v);
      s.mail_params_.push_back(std::move(p));
    }
  }

  static edge::Reply CheckRcpt(Session& s, const Command& c, bool& to_broker) {
    to_broker = false;
    if (!s.mail_from_) return BadSequence("Error: need MAIL command");
    auto path = ParsePathArgument(c.argument, "TO:", /*allow_null=*/false);
    if (!path.ok()) {
      return MakeReply(501, "5.5.4", std::string(path.status().message()));
    }
    const bool smtputf8 = s.Smtputf8();
    if (!ValidMailbox(path->address, smtputf8) &&
        !absl::EqualsIgnoreCase(path->address, "postmaster")) {
      return BadAddress(path->address, smtputf8, "5.1.3",
                        "Bad recipient address syntax");
    }
    std::set<std::string> seen;
    for (const auto& [key, value] : path->params) {
      if (!seen.insert(key).second) {
        return MakeReply(501, "5.5.4",
                         absl::StrCat("Duplicate parameter ", key));
      }
      if (key == "NOTIFY") {
        if (!ValidNotify(value)) {
          return MakeReply(501, "5.5.4", "Bad NOTIFY parameter");
        }
      } else if (key == "ORCPT") {
        if (!ValidOrcpt(value, smtputf8)) {
          return MakeReply(501, "5.5.4", "Bad ORCPT parameter");
        }
      } else {
        return MakeReply(555, "5.5.4",
                         absl::StrCat("Unsupported parameter ", key));
      }
    }
    if (!s.RelayAllowed(path->address)) {
      return MakeReply(554, "5.7.1", "Relay access denied");
    }
    if (static_cast<int>(s.recipients_.size()) >= s.limits_.max_recipients) {
      return MakeReply(452, "4.5.3", "Error: too many recipients");
    }
    to_broker = true;
    return MakeReply(250, "2.1.5", "Ok");
  }
  static void ProceedRcpt(Session& s, const Command& c,
                          const edge::Reply& resolved) {
    if (!resolved.positive()) return;
    auto path = ParsePathArgument(c.argument, "TO:", false);
    v1::Recipient r;
    r.set_address(path->address);
    for (const auto& [k, v] : path->params) {
      auto* p = r.add_params();
      p->set_key(k);
      p->set_value(v);
    }
    s.recipients_.push_back(std::move(r));
  }

  static edge::Reply CheckData(Session& s, const Command& c, bool& to_broker) {
    to_broker = false;
    if (!c.argument.empty()) return MakeReply(501, "5.5.4", "Syntax: DATA");
    if (!s.mail_from_) return BadSequence("Error: need MAIL command");
    if (s.recipients_.empty()) {
      return MakeReply(554, "5.5.1", "Error: no valid recipients");
    }
    if (s.bdat_used_) return BadSequence("Error: DATA after BDAT");
    to_broker = true;
    return MakeReply(354, "", "End data with <CR><LF>.<CR><LF>");
  }
  static void ProceedData(Session& s, const Command&,
                          const edge::Reply& resolved) {
    if (resolved.code != 354) return;
    s.mode_ = Session::Mode::kData;
    s.StartContent();
  }

  // BDAT (RFC 3030): the chunk's octets follow the command line and are
  // read whatever the answer; the answer comes once they are in.
  static edge::Reply CheckBdat(Session& s, const Command& c, bool& to_broker) {
    to_broker = false;
    auto arg = ParseBdatArgument(c.argument);
    if (!arg.ok()) {
      // Without a size the chunk cannot be skipped.
      return MakeReply(501, "5.5.4", std::string(arg.status().message()));
    }
    s.bdat_ = {};
    s.bdat_.size = s.bdat_.remaining = arg->size;
    s.bdat_.last = arg->last;
    if (!s.mail_from_) {
      s.bdat_.refusal = BadSequence("Error: need MAIL command");
    } else if (s.recipients_.empty()) {
      s.bdat_.refusal = MakeReply(554, "5.5.1", "Error: no valid recipients");
    } else if (!s.bdat_used_) {
      s.bdat_used_ = true;
      s.StartContent();
    }
    s.mode_ = Session::Mode::kBdat;
    return {};
  }
  static void ProceedBdat(Session& s, const Command&,
                          const edge::Reply& resolved) {
    // A refused chunk ends the transaction; the client starts over.
    if (!resolved.positive()) s.ResetTransaction();
  }

  static edge::Reply CheckNoArgs(Session&, const Command& c, bool& to_broker) {
    if (!c.argument.empty() && c.verb != "NOOP") {
      to_broker = false;
      return MakeReply(501, "5.5.4", absl::StrCat("Syntax: ", c.verb));
    }
    if (c.verb == "QUIT") return MakeReply(221, "2.0.0", "Bye");
    return Ok();
  }
  static void ProceedRset(Session& s, const Command&, const edge::Reply&) {
    s.ResetTransaction();
  }

  static edge::Reply CheckVrfy(Session&, const Command& c, bool& to_broker) {
    if (c.argument.empty()) {
      to_broker = false;
      return MakeReply(501, "5.5.4", "Syntax: VRFY address");
    }
    return MakeReply(252, "2.5.0",
                     "Cannot VRFY user, but will accept message and attempt "
                     "delivery");
  }
  static edge::Reply CheckHelp(Session&, const Command&, bool&) {
    return MakeReply(214, "2.0.0",
                     "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP "
                     "QUIT STARTTLS AUTH BDAT");
  }
  // STARTTLS (RFC 3207): 220, then the connection hands the socket to TLS.
  static edge::Reply CheckStartTls(Session& s, const Command& c,
                                   bool& to_broker) {
    to_broker = false;
    if (!s.policy_.starttls) {
      return MakeReply(502, "5.5.1", "Error: command not implemented");
    }
    if (s.info_.tls().active()) return BadSequence("Error: TLS already active");
    if (!c.argument.empty()) return MakeReply(501, "5.5.4", "Syntax: STARTTLS");
    if (s.mail_from_) return BadSequence("Error: MAIL transaction in progress");
    to_broker = true;
    return MakeReply(220, "2.0.0", "Ready to start TLS");
  }
  static void ProceedStartTls(Session& s, const Command&,
                              const edge::Reply& resolved) {
    if (resolved.code == 220) s.starting_tls_ = true;
  }

  // AUTH (RFC 4954): only over TLS. The edge runs the SASL exchange itself;
  // the AUTH event comes at its end (FinishAuth), with the identity only.
  static edge::Reply CheckAuth(Session& s, const Command& c, bool& to_broker) {
    to_broker = false;
    if (s.policy_.credentials == nullptr) {
      return MakeReply(502, "5.5.1", "Error: command not implemented");
    }
    if (s.info_.helo_name().empty()) {
      return BadSequence("Error: send EHLO first");
    }
    if (!s.info_.auth_identity().empty()) {
      return BadSequence("Error: already authenticated");
    }
    if (s.mail_from_) return BadSequence("Error: MAIL transaction in progress");
    if (!s.info_.tls().active()) {
      if (s.policy_.starttls) {
        return MakeReply(530, "5.7.0", "Must issue a STARTTLS command first");
      }
      return MakeReply(538, "5.7.11",
                       "Encryption required for requested authentication "
                       "mechanism");
    }
    const size_t space = c.argument.find(' ');
    const std::string mechanism =
        absl::AsciiStrToUpper(c.argument.substr(0, space));
    const std::string initial =
        space == std::string::npos ? "" : c.argument.substr(space + 1);
    if (mechanism.empty() || initial.find(' ') != std::string::npos) {
      return MakeReply(501, "5.5.4", "Syntax: AUTH mechanism [response]");
    }
    if (mechanism != "PLAIN" && mechanism != "LOGIN") {
      return MakeReply(504, "5.5.4", "Unrecognized authentication type");
    }
    s.auth_ = {};
    s.auth_.mechanism = mechanism;
    s.mode_ = Session::Mode::kAuth;
    if (space != std::string::npos) {
      // "=" is an empty initial response.
      s.auth_.initial = initial == "=" ? "" : initial;
      s.auth_.has_initial = true;
    }
    // The first challenge: empty for PLAIN, "Username:" for LOGIN.
    return MakeReply(334, "", mechanism == "PLAIN" ? "" : "VXNlcm5hbWU6");
  }
  static void ProceedAuth(Session& s, const Command&,
                          const edge::Reply& resolved) {
    if (resolved.code == 235 && s.auth_.ok) {
      s.info_.set_auth_identity(s.auth_.user);
    }
    s.auth_ = {};
  }

  static edge::Reply CheckNotImplemented(Session&, const Command&,
                                         bool& to_broker) {
    to_broker = false;
    return MakeReply(502, "5.5.1", "Error: command not implemented");
  }
};

namespace {

const Session::CommandSpec kCommands[] = {
    {"EHLO", v1::EVENT_TYPE_EHLO, &CommandTable::CheckHelo,
     &CommandTable::ProceedHelo},
    {"HELO", v1::EVENT_TYPE_HELO, &CommandTable::CheckHelo,
     &CommandTable::ProceedHelo},
    {"MAIL", v1::EVENT_TYPE_MAIL, &CommandTable::CheckMail,
     &CommandTable::ProceedMail},
    {"RCPT", v1::EVENT_TYPE_RCPT, &CommandTable::CheckRcpt,
     &CommandTable::ProceedRcpt},
    {"DATA", v1::EVENT_TYPE_DATA, &CommandTable::CheckData,
     &CommandTable::ProceedData},
    {"RSET", v1::EVENT_TYPE_RSET, &CommandTable::CheckNoArgs,
     &CommandTable::ProceedRset},
    {"NOOP", v1::EVENT_TYPE_NOOP, &CommandTable::CheckNoArgs, nullptr},
    {"VRFY", v1::EVENT_TYPE_VRFY, &CommandTable::CheckVrfy, nullptr},
    {"HELP", v1::EVENT_TYPE_HELP, &CommandTable::CheckHelp, nullptr},
    {"QUIT", v1::EVENT_TYPE_QUIT, &CommandTable::CheckNoArgs, nullptr},
    // Extensions that come with the complete edge.
    {"STARTTLS", v1::EVENT_TYPE_STARTTLS, &CommandTable::CheckStartTls,
     &CommandTable::ProceedStartTls},
    {"AUTH", v1::EVENT_TYPE_AUTH, &CommandTable::CheckAuth,
     &CommandTable::ProceedAuth},
    {"BDAT", v1::EVENT_TYPE_BDAT, &CommandTable::CheckBdat,
     &CommandTable::ProceedBdat},
};

const Session::CommandSpec kUnknown = {"", v1::EVENT_TYPE_UNKNOWN, nullptr,
                                       nullptr};
const Session::CommandSpec kConnect = {"", v1::EVENT_TYPE_CONNECT, nullptr,
                                       nullptr};
const Session::CommandSpec kEod = {"", v1::EVENT_TYPE_EOD, nullptr, nullptr};

const Session::CommandSpec* FindCommand(const std::string& verb) {
  for (const auto& spec : kCommands) {
    if (verb == spec.verb) return &spec;
  }
  return nullptr;
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
  return policy_.trusted_client || !info_.auth_identity().empty();
}

bool Session::Smtputf8() const {
  for (const auto& p : mail_params_) {
    if (p.key() == "SMTPUTF8") return true;
  }
  return false;
}

void Session::StartContent() {
  chunk_.clear();
  message_size_ = 0;
  line_start_ = true;
  prev_crlf_ = true;
  last_char_ = '\n';
  line_len_ = 0;
  bad_line_ending_ = line_too_long_ = too_big_ = false;
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
  Dispatch(&kConnect, Command{},
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
  if (p.spec == &kEod) ResetTransaction();
  // A MAIL refused (by the edge or by a sink) started no transaction: the
  // events after it carry no transaction id.
  if (p.spec->event == v1::EVENT_TYPE_MAIL && !mail_from_) {
    transaction_id_.clear();
  }
  const bool greeting_refused = p.spec == &kConnect && resolved.code != 220;
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
  if (resolved.code == 0) resolved = p.native;
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
  const bool eod = pending_->spec == &kEod;
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
      Dispatch(&kUnknown, cmd, MakeEvent(v1::EVENT_TYPE_UNKNOWN, cmd, unknown),
               unknown);
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

// DATA: only <CRLF>.<CRLF> ends the message. Lines are unstuffed and
// streamed to the broker in chunks; a bare CR or LF, a line over the limit,
// or a message over the size limit is read to its end and then refused.
bool Session::ProcessData() {
  while (true) {
    const size_t lf = in_.find('\n');
    if (lf == std::string::npos) {
      if (in_.size() > limits_.max_text_line) {
        // A line that long is refused anyway; keep memory bounded.
        std::string piece = std::move(in_);
        in_.clear();
        DataLine(piece, false);
      }
      return false;
    }
    const std::string line = in_.substr(0, lf + 1);
    in_.erase(0, lf + 1);
    const bool crlf = lf > 0 ? line[lf - 1] == '\r' : last_char_ == '\r';
    if (line_start_ && prev_crlf_ && line == ".\r\n") {
      EndOfData();
      return true;
    }
    // prev_crlf_ keeps what the client sent: a line after a bare LF never
    // ends DATA, normalized or not.
    prev_crlf_ = crlf;
    if (crlf) {
      DataLine(line, true);
    } else if (limits_.normalize_bare_lf) {
      DataLine(absl::StrCat(absl::string_view(line).substr(0, lf), "\r\n"),
               true);
    } else {
      DataLine(line, true);
      bad_line_ending_ = true;
    }
    if (mode_ != Mode::kData) return true;
  }
}

void Session::DataLine(absl::string_view piece, bool complete) {
  line_len_ += piece.size();
  if (line_len_ > limits_.max_text_line) line_too_long_ = true;
  // A CR anywhere but right before the line's LF is a bare CR.
  const size_t body = complete ? piece.size() - 1 : piece.size();
  for (size_t i = 0; i < body; ++i) {
    if (piece[i] == '\r' && !(complete && i + 2 == piece.size())) {
      bad_line_ending_ = true;
    }
  }
  if (line_start_ && !piece.empty() && piece[0] == '.') piece.remove_prefix(1);
  last_char_ = piece.empty() ? last_char_ : piece.back();
  line_start_ = complete;
  if (complete) line_len_ = 0;
  message_size_ += piece.size();
  if (message_size_ > limits_.max_message_size) too_big_ = true;
  if (too_big_ || bad_line_ending_ || line_too_long_) {
    chunk_.clear();  // refused at the end; stop sending content
    return;
  }
  chunk_.append(piece.data(), piece.size());
  if (chunk_.size() >= limits_.chunk_size) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
}

// BDAT octets: no dot-stuffing and no end marker, but the same rules for
// line endings, line length and size as DATA.
bool Session::ProcessBdat() {
  if (bdat_.remaining > 0) {
    if (in_.empty()) return false;
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(in_.size(), bdat_.remaining));
    if (bdat_.refusal.code == 0) BdatBytes(absl::string_view(in_).substr(0, n));
    in_.erase(0, n);
    bdat_.remaining -= n;
    if (bdat_.remaining > 0) return false;
  }
  EndOfChunk();
  return true;
}

void Session::BdatBytes(absl::string_view piece) {
  for (char c : piece) {
    if ((c == '\n' && last_char_ != '\r') ||
        (last_char_ == '\r' && c != '\n')) {
      bad_line_ending_ = true;
    }
    line_len_ = c == '\n' ? 0 : line_len_ + 1;
    // The limit counts the CRLF; the CR is counted here, the LF is one more.
    if (line_len_ + 1 > limits_.max_text_line) line_too_long_ = true;
    last_char_ = c;
  }
  message_size_ += piece.size();
  if (message_size_ > limits_.max_message_size) too_big_ = true;
  if (too_big_ || bad_line_ending_ || line_too_long_) {
    chunk_.clear();
    return;
  }
  chunk_.append(piece.data(), piece.size());
  if (chunk_.size() >= limits_.chunk_size) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
}

void Session::EndOfChunk() {
  mode_ = Mode::kCommand;
  const BdatChunk b = bdat_;
  bdat_ = {};
  if (b.refusal.code != 0) {
    Reply(b.refusal);
    return;
  }
  // A message that cannot end well is refused at once, not at LAST.
  const bool ends_badly = b.last && last_char_ == '\r';
  if (too_big_ || bad_line_ending_ || line_too_long_ || ends_badly) {
    if (ends_badly) bad_line_ending_ = true;
    EndOfData();
    return;
  }
  const Command cmd{"BDAT", absl::StrCat(b.size, b.last ? " LAST" : "")};
  const edge::Reply native =
      MakeReply(250, "2.0.0", absl::StrCat("Ok: ", b.size, " octets received"));
  v1::Event event = MakeEvent(v1::EVENT_TYPE_BDAT, cmd, native);
  event.set_chunk_size(b.size);
  event.set_last_chunk(b.last);
  if (!b.last) {
    Dispatch(FindCommand("BDAT"), cmd, std::move(event), native);
    return;
  }
  // The last chunk's answer is the EOD's (the COMMIT).
  out_->SendEvent(event, /*notify_only=*/true);
  EndOfData();
}

void Session::EndOfData() {
  mode_ = Mode::kCommand;
  metric_verb_ = "EOD";
  edge::Reply refusal;
  if (too_big_) {
    refusal = MakeReply(552, "5.3.4", "Error: message size exceeds limit");
  } else if (bad_line_ending_) {
    refusal = MakeReply(550, "5.6.0",
                        "Error: bare CR or LF in message; lines must end "
                        "with CRLF");
  } else if (line_too_long_) {
    refusal = MakeReply(550, "5.6.0",
                        absl::StrCat("Error: message line longer than ",
                                     limits_.max_text_line, " octets"));
  }
  if (refusal.code != 0) {
    // The broker drops the content when the next transaction starts.
    chunk_.clear();
    ResetTransaction();
    Reply(refusal);
    return;
  }
  if (broker_lost_) {
    chunk_.clear();
    ResetTransaction();
    Reply(MakeReply(451, "4.3.0",
                    "Error: queue unavailable, message not accepted"));
    return;
  }
  if (!chunk_.empty()) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
  const edge::Reply native = MakeReply(250, "2.0.0", "Ok");
  v1::Event eod = MakeEvent(v1::EVENT_TYPE_EOD, Command{}, native);
  eod.set_message_size(message_size_);
  Dispatch(&kEod, Command{}, std::move(eod), native);
}

}  // namespace sinkline::edge
