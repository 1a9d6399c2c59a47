#include "sinks/milter/milter_session.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace sinkline::milter {
namespace {

// Which command letter the macros of a stage are sent for.
char MacroCommand(Stage stage) {
  switch (stage) {
    case Stage::kConnect:
      return cmd::kConnect;
    case Stage::kHelo:
      return cmd::kHelo;
    case Stage::kMail:
      return cmd::kMail;
    case Stage::kRcpt:
      return cmd::kRcpt;
    case Stage::kData:
      return cmd::kData;
    case Stage::kEoh:
      return cmd::kEoh;
    case Stage::kEom:
      return cmd::kBodyEob;
  }
  return cmd::kConnect;
}

}  // namespace

std::string MilterSession::RequestedMacros(Stage stage) const {
  auto it = options().macros.find(static_cast<uint32_t>(stage));
  return it == options().macros.end() ? "" : it->second;
}

absl::StatusOr<Reply> MilterSession::ReadFinal(Clock::time_point deadline) {
  for (;;) {
    auto p = conn_->Receive(deadline);
    if (!p.ok()) return Fail(p.status());
    auto r = DecodeReply(*p);
    if (!r.ok()) return Fail(r.status());
    if (r->kind == Reply::Kind::kProgress) continue;
    if (!r->final()) {
      return Fail(
          ProtocolError(absl::StrCat("modification '", std::string(1, p->code),
                                     "' before end of message")));
    }
    return *r;
  }
}

absl::StatusOr<Outcome> MilterSession::Step(char code, absl::string_view data,
                                            uint32_t no_flag, uint32_t nr_flag,
                                            Stage macro_stage,
                                            const Macros& macros) {
  Outcome out;
  if (broken_) return absl::UnavailableError("the milter connection broke");
  if (connection_accepted_ ||
      (message_done_ && code != cmd::kConnect && code != cmd::kHelo &&
       code != cmd::kMail) ||
      (no_flag != 0 && (options().protocol & no_flag) != 0)) {
    out.skipped = true;
    return out;
  }
  const auto start = Clock::now();
  const auto deadline = start + timeouts_.command;
  // The macros and the command in one write.
  std::string packets;
  if (!macros.empty()) {
    AppendPacket(packets, cmd::kMacro,
                 EncodeMacros(MacroCommand(macro_stage), macros));
  }
  AppendPacket(packets, code, data);
  if (auto s = conn_->SendRaw(packets, deadline); !s.ok()) return Fail(s);
  if (nr_flag != 0 && (options().protocol & nr_flag) != 0) return out;
  auto r = ReadFinal(deadline);
  if (!r.ok()) return r.status();
  ObserveLatency("command", start);
  out.final = *r;
  if (r->kind == Reply::Kind::kAccept) {
    // Accept at connect or helo accepts the connection; later, the message.
    if (code == cmd::kConnect || code == cmd::kHelo) {
      connection_accepted_ = true;
    } else {
      message_done_ = true;
    }
  }
  if (r->kind == Reply::Kind::kSkip) body_skipped_ = true;
  return out;
}

absl::StatusOr<Outcome> MilterSession::Connect(absl::string_view hostname,
                                               char family, uint16_t port,
                                               absl::string_view address,
                                               const Macros& macros) {
  return Step(cmd::kConnect, EncodeConnect(hostname, family, port, address),
              kNoConnect, kNrConn, Stage::kConnect, macros);
}

absl::StatusOr<Outcome> MilterSession::Helo(absl::string_view helo,
                                            const Macros& macros) {
  return Step(cmd::kHelo, EncodeHelo(helo), kNoHelo, kNrHelo, Stage::kHelo,
              macros);
}

absl::StatusOr<Outcome> MilterSession::Mail(
    absl::string_view sender, const std::vector<std::string>& args,
    const Macros& macros) {
  NewMessage();
  return Step(cmd::kMail, EncodeEnvelope(sender, args), kNoMail, kNrMail,
              Stage::kMail, macros);
}

absl::StatusOr<Outcome> MilterSession::Rcpt(
    absl::string_view recipient, const std::vector<std::string>& args,
    const Macros& macros) {
  return Step(cmd::kRcpt, EncodeEnvelope(recipient, args), kNoRcpt, kNrRcpt,
              Stage::kRcpt, macros);
}

absl::StatusOr<Outcome> MilterSession::Data(const Macros& macros) {
  if (options().version < 4) {
    Outcome out;
    out.skipped = true;
    return out;
  }
  return Step(cmd::kData, "", kNoData, kNrData, Stage::kData, macros);
}

absl::StatusOr<Outcome> MilterSession::Unknown(absl::string_view line) {
  return Step(cmd::kUnknown, EncodeUnknown(line), kNoUnknown, kNrUnkn,
              Stage::kConnect, {});
}

absl::StatusOr<Outcome> MilterSession::Header(absl::string_view name,
                                              absl::string_view value) {
  // Folded lines go to milters with a bare LF, as Postfix and Sendmail send
  // them; the space after the colon only when the milter asked for it.
  std::string v;
  v.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '\r' && i + 1 < value.size() && value[i + 1] == '\n')
      continue;
    v.push_back(value[i]);
  }
  absl::string_view sent = v;
  if ((options().protocol & kHdrLeadSpc) == 0) {
    sent = absl::StripLeadingAsciiWhitespace(sent);
  }
  return Step(cmd::kHeader, EncodeHeader(name, sent), kNoHdrs, kNrHdr,
              Stage::kEoh, {});
}

absl::StatusOr<Outcome> MilterSession::Eoh(const Macros& macros) {
  return Step(cmd::kEoh, "", kNoEoh, kNrEoh, Stage::kEoh, macros);
}

absl::StatusOr<Outcome> MilterSession::Body(absl::string_view chunk) {
  if (body_skipped_) {
    Outcome out;
    out.skipped = true;
    return out;
  }
  return Step(cmd::kBody, chunk, kNoBody, kNrBody, Stage::kEom, {});
}

absl::StatusOr<Outcome> MilterSession::EndOfMessage(
    const Macros& macros,
    const std::function<Clock::time_point(Clock::time_point)>& progress,
    const BodySink& body) {
  Outcome out;
  if (broken_) return absl::UnavailableError("the milter connection broke");
  if (connection_accepted_ || message_done_) {
    out.skipped = true;
    return out;
  }
  const auto start = Clock::now();
  auto deadline = start + timeouts_.eom;
  std::string packets;
  if (!macros.empty()) {
    AppendPacket(packets, cmd::kMacro, EncodeMacros(cmd::kBodyEob, macros));
  }
  AppendPacket(packets, cmd::kBodyEob, "");
  if (auto s = conn_->SendRaw(packets, deadline); !s.ok()) return Fail(s);
  size_t body_size = 0;
  for (;;) {
    auto p = conn_->Receive(deadline);
    if (!p.ok()) return Fail(p.status());
    auto r = DecodeReply(*p);
    if (!r.ok()) return Fail(r.status());
    using K = Reply::Kind;
    if (r->kind == K::kProgress) {
      deadline = progress ? progress(deadline) : deadline;
      continue;
    }
    if (r->kind == K::kReplBody) {
      body_size += r->body.size();
      if (body_size > timeouts_.max_body) {
        return Fail(ProtocolError(
            absl::StrCat("replaced body exceeds --max-replaced-body (",
                         timeouts_.max_body, " octets)")));
      }
      out.body_replaced = true;
      if (body) {
        if (auto s = body(r->body); !s.ok()) return Fail(s);
      } else {
        out.body += r->body;
      }
      continue;
    }
    if (r->kind == K::kSkip) {
      return Fail(ProtocolError("SKIP at end of message"));
    }
    if (r->final()) {
      ObserveLatency("eom", start);
      out.final = *r;
      message_done_ = true;
      return out;
    }
    out.edits.push_back(std::move(*r));
  }
}

absl::Status MilterSession::Abort() {
  if (broken_) return absl::UnavailableError("the milter connection broke");
  message_done_ = false;
  body_skipped_ = false;
  if (auto s = conn_->Send(cmd::kAbort, "", Clock::now() + timeouts_.command);
      !s.ok()) {
    return Fail(s);
  }
  return absl::OkStatus();
}

}  // namespace sinkline::milter
