// The command table: the check and proceed steps of every verb the edge
// implements, and the table that names them.
#include "smtp_edge/commands.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/metrics.h"
#include "smtp_edge/parser.h"

namespace sinkline::edge {

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

Counter& SourceRoutedRefused() {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_edge_source_routed_refused_total",
      "Recipients refused 550 5.7.1 for sender-specified routing (%, ! or a "
      "quoted @ in the local part) from a client neither trusted nor "
      "authenticated (--allow-untrusted-routing).");
}

}  // namespace

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
    if (HasSourceRouting(path->address) && !s.policy_.allow_untrusted_routing &&
        !s.TrustedClient()) {
      SourceRoutedRefused().Inc();
      return MakeReply(550, "5.7.1",
                       "Source routing (%, ! or a quoted @ in the local part) "
                       "refused: Relay access denied");
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

}  // namespace

const Session::CommandSpec kUnknownCommand = {"", v1::EVENT_TYPE_UNKNOWN,
                                              nullptr, nullptr};
const Session::CommandSpec kConnectEvent = {"", v1::EVENT_TYPE_CONNECT, nullptr,
                                            nullptr};
const Session::CommandSpec kEodEvent = {"", v1::EVENT_TYPE_EOD, nullptr,
                                        nullptr};

const Session::CommandSpec* FindCommand(const std::string& verb) {
  for (const auto& spec : kCommands) {
    if (verb == spec.verb) return &spec;
  }
  return nullptr;
}

}  // namespace sinkline::edge
