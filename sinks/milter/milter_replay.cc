#include "sinks/milter/milter_replay.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::milter {
namespace {

bool IsContinue(const Outcome& o) {
  return o.skipped || o.final.kind == Reply::Kind::kContinue ||
         o.final.kind == Reply::Kind::kAccept ||
         o.final.kind == Reply::Kind::kSkip;
}

std::vector<std::string> EsmtpArgs(
    const google::protobuf::RepeatedPtrField<v1::EsmtpParam>& params) {
  std::vector<std::string> out;
  for (const auto& p : params) {
    out.push_back(p.value().empty() ? p.key()
                                    : absl::StrCat(p.key(), "=", p.value()));
  }
  return out;
}

char Family(const std::string& ip) {
  if (ip.empty()) return 'U';
  return ip.find(':') == std::string::npos ? '4' : '6';
}

}  // namespace

MacroConfig MacroConfig::Defaults() {
  MacroConfig c;
  auto set = [&](Stage s, absl::string_view list) {
    c.names[static_cast<uint32_t>(s)] = Parse(list);
  };
  set(Stage::kConnect,
      "j {daemon_name} {daemon_addr} {if_name} {if_addr} v _ {client_addr} "
      "{client_port} {client_name}");
  set(Stage::kHelo, "{tls_version} {cipher} {cert_subject}");
  set(Stage::kMail, "i {auth_authen} {mail_addr} {mail_mailer}");
  set(Stage::kRcpt, "{rcpt_addr} {rcpt_host} {rcpt_mailer}");
  set(Stage::kData, "i");
  set(Stage::kEoh, "i");
  set(Stage::kEom, "i");
  return c;
}

std::vector<std::string> MacroConfig::Parse(absl::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view n :
       absl::StrSplit(list, absl::ByAnyChar(" ,\t"), absl::SkipEmpty())) {
    absl::ConsumePrefix(&n, "{");
    absl::ConsumeSuffix(&n, "}");
    if (!n.empty()) out.emplace_back(n);
  }
  return out;
}

std::string MacroValue(absl::string_view name, const v1::Event& event,
                       const MacroConfig& config, const v1::Recipient* rcpt) {
  const auto& s = event.session();
  const std::string client_name = "unknown";
  if (name == "j" || name == "if_name") return s.server_hostname();
  if (name == "daemon_name") return config.daemon_name;
  if (name == "daemon_addr" || name == "if_addr") return s.server().ip();
  if (name == "v") return "Sinkline";
  if (name == "_") return absl::StrCat(client_name, " [", s.client().ip(), "]");
  if (name == "client_addr") return s.client().ip();
  if (name == "client_port") return absl::StrCat(s.client().port());
  if (name == "client_name") return client_name;
  if (name == "tls_version") return s.tls().active() ? s.tls().version() : "";
  if (name == "cipher") return s.tls().active() ? s.tls().cipher() : "";
  if (name == "cert_subject") return s.tls().peer_subject();
  if (name == "auth_authen") return s.auth_identity();
  if (name == "mail_addr") return event.envelope().mail_from();
  if (name == "mail_mailer" || name == "rcpt_mailer") return "smtp";
  if (name == "rcpt_addr" || name == "rcpt_host") {
    const std::string& a = rcpt != nullptr ? rcpt->address()
                           : event.type() == v1::EVENT_TYPE_RCPT
                               ? event.recipient().address()
                           : event.envelope().recipients_size() > 0
                               ? event.envelope().recipients(0).address()
                               : event.recipient().address();
    if (name == "rcpt_addr") return a;
    const size_t at = a.rfind('@');
    return at == std::string::npos ? "" : a.substr(at + 1);
  }
  if (name == "i") return event.queue_id();
  return "";
}

Macros MacrosFor(Stage stage, const v1::Event& event, const MacroConfig& config,
                 const MilterSession& session, const v1::Recipient* rcpt) {
  std::vector<std::string> names;
  const std::string asked = session.RequestedMacros(stage);
  if (!session.options().macros.empty()) {
    names = MacroConfig::Parse(asked);
  } else {
    names = config.names[static_cast<uint32_t>(stage)];
  }
  Macros out;
  for (const auto& n : names) {
    std::string value = MacroValue(n, event, config, rcpt);
    if (value.empty()) continue;
    // Single letters go bare, longer names in braces, as Sendmail does.
    out.emplace_back(n.size() == 1 ? n : absl::StrCat("{", n, "}"),
                     std::move(value));
  }
  return out;
}

SplitMessage Split(absl::string_view message) {
  SplitMessage out;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t eol = message.find("\r\n", pos);
    if (eol == absl::string_view::npos) eol = message.size();
    absl::string_view line = message.substr(pos, eol - pos);
    const size_t next = std::min(message.size(), eol + 2);
    if (line.empty()) {
      out.body = message.substr(next);
      return out;
    }
    if ((line[0] == ' ' || line[0] == '\t') && !out.headers.empty()) {
      absl::StrAppend(&out.headers.back().second, "\r\n", line);
    } else {
      const size_t colon = line.find(':');
      if (colon == absl::string_view::npos) {
        // Not a header field: the body starts here (no blank line).
        out.body = message.substr(pos);
        return out;
      }
      out.headers.emplace_back(std::string(absl::StripTrailingAsciiWhitespace(
                                   line.substr(0, colon))),
                               std::string(line.substr(colon + 1)));
    }
    pos = next;
  }
  out.body = message.substr(message.size());
  return out;
}

absl::StatusOr<StepResult> CatchUp(
    SessionState& state, const v1::Event& event, const MacroConfig& macros,
    absl::string_view message,
    const std::function<Clock::time_point(Clock::time_point)>& progress,
    const BodySink& body) {
  MilterSession& m = *state.milter;
  const auto& s = event.session();
  const v1::EventType type = event.type();
  StepResult result;
  auto stop = [&](Step step, Outcome o) -> absl::StatusOr<StepResult> {
    result.step = step;
    result.outcome = std::move(o);
    return result;
  };
  if (!state.connected) {
    const std::string host = s.client().ip().empty()
                                 ? std::string("localhost")
                                 : absl::StrCat("[", s.client().ip(), "]");
    auto o = m.Connect(
        host, Family(s.client().ip()), static_cast<uint16_t>(s.client().port()),
        s.client().ip(), MacrosFor(Stage::kConnect, event, macros, m));
    if (!o.ok()) return o.status();
    state.connected = true;
    if (!IsContinue(*o)) return stop(Step::kConnect, *o);
  }
  if (type == v1::EVENT_TYPE_CONNECT) return result;
  const bool is_helo =
      type == v1::EVENT_TYPE_HELO || type == v1::EVENT_TYPE_EHLO;
  const std::string helo =
      is_helo ? std::string(absl::StripAsciiWhitespace(event.argument()))
              : s.helo_name();
  if (!helo.empty() && (!state.helo_sent || (is_helo && helo != state.helo))) {
    auto o = m.Helo(helo, MacrosFor(Stage::kHelo, event, macros, m));
    if (!o.ok()) return o.status();
    state.helo_sent = true;
    state.helo = helo;
    if (!IsContinue(*o)) return stop(Step::kHelo, *o);
  }
  if (is_helo || event.transaction_id().empty()) return result;
  if (state.transaction != event.transaction_id()) {
    if (!state.transaction.empty()) {
      if (auto st = m.Abort(); !st.ok()) return st;
    }
    state.transaction = event.transaction_id();
    state.rcpts_sent.clear();
    state.discard = false;
    auto o = m.Mail(event.envelope().mail_from(),
                    EsmtpArgs(event.envelope().mail_params()),
                    MacrosFor(Stage::kMail, event, macros, m));
    if (!o.ok()) return o.status();
    if (!IsContinue(*o)) return stop(Step::kMail, *o);
  }
  if (type == v1::EVENT_TYPE_MAIL) return result;
  // Recipients accepted already that the milter has not seen.
  const auto& rcpts = event.envelope().recipients();
  for (const auto& rcpt : rcpts) {
    if (!state.rcpts_sent.insert(absl::AsciiStrToLower(rcpt.address()))
             .second) {
      continue;
    }
    auto o = m.Rcpt(rcpt.address(), EsmtpArgs(rcpt.params()),
                    MacrosFor(Stage::kRcpt, event, macros, m, &rcpt));
    if (!o.ok()) return o.status();
    if (!IsContinue(*o)) {
      if (o->final.kind == Reply::Kind::kDiscard) {
        state.discard = true;
        continue;
      }
      result.refused_recipients.push_back(rcpt.address());
      result.last_refusal = o->final;
    }
  }
  if (type == v1::EVENT_TYPE_RCPT) {
    state.rcpts_sent.insert(absl::AsciiStrToLower(event.recipient().address()));
    auto o = m.Rcpt(event.recipient().address(),
                    EsmtpArgs(event.recipient().params()),
                    MacrosFor(Stage::kRcpt, event, macros, m));
    if (!o.ok()) return o.status();
    if (!IsContinue(*o)) return stop(Step::kRcpt, *o);
    return result;
  }
  if (type != v1::EVENT_TYPE_EOD) return result;
  if (!result.refused_recipients.empty() &&
      result.refused_recipients.size() == static_cast<size_t>(rcpts.size())) {
    Outcome o;
    o.final = result.last_refusal;
    return stop(Step::kRcpt, o);
  }
  auto o = m.Data(MacrosFor(Stage::kData, event, macros, m));
  if (!o.ok()) return o.status();
  if (!IsContinue(*o)) return stop(Step::kData, *o);
  const SplitMessage split = Split(message);
  for (const auto& [name, value] : split.headers) {
    o = m.Header(name, value);
    if (!o.ok()) return o.status();
    if (!IsContinue(*o)) return stop(Step::kMessage, *o);
  }
  o = m.Eoh(MacrosFor(Stage::kEoh, event, macros, m));
  if (!o.ok()) return o.status();
  if (!IsContinue(*o)) return stop(Step::kMessage, *o);
  for (size_t pos = 0; pos < split.body.size(); pos += kBodyChunk) {
    o = m.Body(split.body.substr(pos, kBodyChunk));
    if (!o.ok()) return o.status();
    if (o->skipped) break;
    if (!IsContinue(*o)) return stop(Step::kMessage, *o);
  }
  o = m.EndOfMessage(MacrosFor(Stage::kEom, event, macros, m), progress, body);
  if (!o.ok()) return o.status();
  // A new MAIL may follow on this connection after end of message.
  state.transaction.clear();
  return stop(Step::kMessage, *o);
}

}  // namespace sinkline::milter
