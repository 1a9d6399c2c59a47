#include "sinks/milter/milter_verdict.h"

#include <spdlog/spdlog.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "sinkline/common/metrics.h"
#include "sinkline/sdk/content.h"

namespace sinkline::milter {
namespace {

using K = Reply::Kind;

uint32_t ActionOf(K kind) {
  switch (kind) {
    case K::kAddHeader:
    case K::kInsHeader:
      return kAddHdrs;
    case K::kChgHeader:
      return kChgHdrs;
    case K::kAddRcpt:
      return kAddRcpt | kAddRcptPar;
    case K::kDelRcpt:
      return kDelRcpt;
    case K::kChgFrom:
      return kChgFrom;
    case K::kQuarantine:
      return kQuarantine;
    case K::kReplBody:
      return kChgBody;
    default:
      return 0;
  }
}

// "NOTIFY=NEVER ORCPT=rfc822;a@b" → ESMTP params.
std::vector<v1::EsmtpParam> Params(absl::string_view args) {
  std::vector<v1::EsmtpParam> out;
  for (absl::string_view a : absl::StrSplit(args, ' ', absl::SkipEmpty())) {
    v1::EsmtpParam p;
    const size_t eq = a.find('=');
    p.set_key(absl::AsciiStrToUpper(a.substr(0, eq)));
    if (eq != absl::string_view::npos)
      p.set_value(std::string(a.substr(eq + 1)));
    out.push_back(std::move(p));
  }
  return out;
}

// Streams a body held whole (per-command sessions without a stream) to the
// broker under the lease.
absl::Status StreamBody(const sdk::EventContext& ctx, uint32_t actions,
                        absl::string_view body) {
  BodyStream stream(ctx, actions);
  for (size_t pos = 0; pos < body.size(); pos += 256 * 1024) {
    if (auto s = stream.Write(body.substr(pos, 256 * 1024)); !s.ok()) return s;
  }
  if (body.empty()) {
    if (auto s = stream.Write(""); !s.ok()) return s;
  }
  return stream.Finish();
}

}  // namespace

BodyStream::~BodyStream() {
  if (writer_ && !finished_) {
    context_->TryCancel();
    (void)writer_->Finish();
  }
}

absl::Status BodyStream::Write(absl::string_view chunk) {
  if ((actions_ & kChgBody) == 0) {
    return ProtocolError("body replaced without SMFIF_CHGBODY");
  }
  octets_ += chunk.size();
  MetricsRegistry::Default()
      .GetCounter("sinkline_milter_replaced_body_octets_total",
                  "Octets of bodies replaced by the milter, streamed to "
                  "the broker.")
      .Inc(static_cast<double>(chunk.size()));
  if (!ctx_.can_write()) {
    dropped_ = true;  // ApplyResult says so once
    return absl::OkStatus();
  }
  v1::ReplaceBodyRequest req;
  if (!writer_) {
    const v1::Lease& lease = ctx_.lease();
    auto stub = sdk::ContentClient::Default().Stub(lease.content_endpoint());
    context_ = std::make_unique<grpc::ClientContext>();
    auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(60);
    context_->set_deadline(std::min(deadline, ctx_.deadline()));
    sdk::AddClaim(*context_, sdk::ClaimedLease(ctx_));
    response_ = std::make_unique<v1::EditResponse>();
    writer_ = stub->ReplaceBody(context_.get(), response_.get());
    req.set_token(lease.token());
  }
  req.set_data(std::string(chunk));
  if (!writer_->Write(req)) {
    finished_ = true;
    return sdk::FromGrpc(writer_->Finish());
  }
  return absl::OkStatus();
}

absl::Status BodyStream::Finish() {
  if (!writer_ || finished_) return absl::OkStatus();
  finished_ = true;
  writer_->WritesDone();
  return sdk::FromGrpc(writer_->Finish());
}

std::string NormalizeFolding(absl::string_view value) {
  std::string out;
  out.reserve(value.size() + 8);
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '\r') continue;
    if (c == '\n') {
      out += "\r\n";
      // A line that does not start with white space would end the field.
      if (i + 1 < value.size() && value[i + 1] != ' ' && value[i + 1] != '\t')
        out += '\t';
      continue;
    }
    out += c;
  }
  return out;
}

SmtpReply RefusalReply(const Reply& r) {
  switch (r.kind) {
    case K::kTempfail:
      return {451, "4.7.1", "Service unavailable - try again later"};
    case K::kReplyCode: {
      std::string enhanced = r.enhanced;
      if (enhanced.empty()) enhanced = r.code >= 500 ? "5.7.1" : "4.7.1";
      return {r.code, enhanced, r.text.empty() ? "Command rejected" : r.text};
    }
    case K::kShutdown:
    case K::kConnFail:
      return {421, "4.7.0", "Service unavailable - closing connection"};
    default:
      return {550, "5.7.1", "Command rejected"};
  }
}

std::string HeaderValue(absl::string_view value, bool lead_space) {
  if (lead_space && !value.empty() && value.front() == ' ') {
    value.remove_prefix(1);
  }
  return NormalizeFolding(value);
}

absl::Status ApplyResult(const StepResult& result, bool discard,
                         const Options& negotiated, sdk::EventContext& ctx,
                         BodyStream* body) {
  const uint32_t actions = negotiated.actions;
  const bool lead_space = (negotiated.protocol & kHdrLeadSpc) != 0;
  const v1::EventType type = ctx.event().type();
  const bool eod = type == v1::EVENT_TYPE_EOD;
  const Reply& final = result.outcome.final;
  // Refused while replayed (EOD only): those recipients are removed.
  if (eod && result.step != Step::kRcpt) {
    for (const auto& r : result.refused_recipients) {
      if (!ctx.can_write()) {
        return absl::FailedPreconditionError(
            "the milter refused a recipient, and the binding cannot edit the "
            "envelope (content_access: read-write)");
      }
      ctx.RemoveRecipient(r);
    }
  }
  if (result.step == Step::kNone || result.outcome.skipped) {
    if (eod && discard) ctx.Consume(250, "2.0.0", "Ok: discarded");
    return absl::OkStatus();
  }
  switch (final.kind) {
    case K::kContinue:
    case K::kAccept:
    case K::kSkip:
      break;
    case K::kDiscard:
      // Postfix discards the whole message, at whatever step it was asked.
      if (eod) {
        ctx.Consume(250, "2.0.0", "Ok: discarded");
        return absl::OkStatus();
      }
      return absl::OkStatus();  // the caller remembers it for EOD
    case K::kShutdown:
    case K::kConnFail:
      ctx.DropSession(RefusalReply(final).text);
      return absl::OkStatus();
    default: {
      const SmtpReply r = RefusalReply(final);
      ctx.Reject(r.code, r.enhanced, r.text);
      return absl::OkStatus();
    }
  }
  if (!eod) return absl::OkStatus();
  if (discard) {
    ctx.Consume(250, "2.0.0", "Ok: discarded");
    return absl::OkStatus();
  }
  const Outcome& o = result.outcome;
  if ((!o.edits.empty() || o.body_replaced) && !ctx.can_write()) {
    // Edits the binding cannot make: say so once, keep the answer.
    spdlog::warn(
        "milter asked for {} modification(s) but binding {} is not "
        "read-write; they are dropped",
        o.edits.size() + (o.body_replaced ? 1 : 0), ctx.binding());
    return absl::OkStatus();
  }
  std::string quarantine;
  for (const Reply& e : o.edits) {
    if ((ActionOf(e.kind) & actions) == 0) {
      return ProtocolError("modification that was not negotiated");
    }
    switch (e.kind) {
      case K::kAddHeader:
        ctx.AppendHeader(e.name, HeaderValue(e.value, lead_space));
        break;
      case K::kInsHeader:
        ctx.AddHeader(e.name, HeaderValue(e.value, lead_space), e.index);
        break;
      case K::kChgHeader:
        if (e.value.empty()) {
          ctx.DeleteHeader(e.name, std::max<uint32_t>(1, e.index));
        } else {
          ctx.ChangeHeader(e.name, std::max<uint32_t>(1, e.index),
                           HeaderValue(e.value, lead_space));
        }
        break;
      case K::kAddRcpt:
        ctx.AddRecipient(e.address, Params(e.args));
        break;
      case K::kDelRcpt:
        ctx.RemoveRecipient(e.address);
        break;
      case K::kChgFrom:
        ctx.SetSender(e.address);
        break;
      case K::kQuarantine:
        quarantine = e.text.empty() ? "quarantined by milter" : e.text;
        break;
      default:
        return ProtocolError("unexpected modification at end of message");
    }
  }
  if (o.body_replaced) {
    if ((actions & kChgBody) == 0) {
      return ProtocolError("body replaced without SMFIF_CHGBODY");
    }
    auto s =
        body != nullptr ? body->Finish() : StreamBody(ctx, actions, o.body);
    if (!s.ok()) return s;
  }
  if (!quarantine.empty()) {
    if (ctx.after_commit()) {
      // After COMMIT a refusal holds the message for an operator.
      ctx.Reject(550, "5.7.1", absl::StrCat("quarantined: ", quarantine));
    } else {
      ctx.AddHeader("X-Sinkline-Quarantine", quarantine);
    }
  }
  return absl::OkStatus();
}

}  // namespace sinkline::milter
