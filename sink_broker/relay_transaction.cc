#include "sink_broker/relay_transaction.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkline::broker::relay {

namespace {

// Content is read and written in chunks of this size.
constexpr size_t kChunk = 65536;

// MAIL's parameters for this next hop, or why the message cannot go to it
// without a downgrade (FAILED_PRECONDITION: refused for good, with the
// enhanced status code a DSN would carry).
absl::StatusOr<std::string> MailParams(const v1::QueueEntry& entry,
                                       const Connection& c) {
  const v1::Envelope& env = entry.envelope();
  std::string out;
  if (c.Offers("SIZE")) {
    const uint64_t limit = c.SizeLimit();
    if (limit > 0 && entry.size() > limit) {
      return absl::FailedPreconditionError(
          absl::StrCat("5.3.4 message size ", entry.size(),
                       " exceeds the next hop's SIZE limit ", limit));
    }
    absl::StrAppend(&out, " SIZE=", entry.size());
  }
  for (const auto& p : env.mail_params()) {
    const std::string key = absl::AsciiStrToUpper(p.key());
    const std::string value = absl::AsciiStrToUpper(p.value());
    std::string need;
    if (key == "BODY") {
      if (value == "8BITMIME") need = "8BITMIME";
      if (value == "BINARYMIME") need = "BINARYMIME";
      // BODY=7BIT is the default: sent only where it means something.
      if (value == "7BIT" && !c.Offers("8BITMIME")) continue;
    } else if (key == "SMTPUTF8") {
      need = "SMTPUTF8";
    } else if (key == "RET" || key == "ENVID") {
      // DSN requests: without DSN the next hop's own defaults apply, which
      // is what RFC 3461 §4.3 (relay to a non-DSN server) describes.
      if (!c.Offers("DSN")) continue;
    } else if (key == "SIZE") {
      continue;  // ours, above
    } else {
      continue;  // not ours to pass on (AUTH and the like end at the edge)
    }
    if (!need.empty() && !c.Offers(need)) {
      return absl::FailedPreconditionError(absl::StrCat(
          need == "SMTPUTF8" ? "5.6.7" : "5.6.3",
          " the next hop does not offer ", need, ", which the message needs (",
          key, "=", p.value(), ")"));
    }
    absl::StrAppend(&out, " ", key);
    if (!p.value().empty()) absl::StrAppend(&out, "=", p.value());
  }
  return out;
}

// RCPT's parameters: DSN's NOTIFY and ORCPT when the next hop offers DSN.
std::string RcptParams(const v1::Recipient& rcpt, const Connection& c) {
  std::string out;
  if (!c.Offers("DSN")) return out;
  for (const auto& p : rcpt.params()) {
    const std::string key = absl::AsciiStrToUpper(p.key());
    if (key != "NOTIFY" && key != "ORCPT") continue;
    absl::StrAppend(&out, " ", key, "=", p.value());
  }
  return out;
}

}  // namespace

Awaitable<TransactionResult> Transaction(Connection& c, bool reused,
                                         const v1::QueueEntry& entry, int fd,
                                         const std::string& content_path) {
  const v1::Envelope& env = entry.envelope();
  auto params = MailParams(entry, c);
  if (!params.ok()) co_return TransactionResult{params.status()};
  std::vector<std::string> lines;
  lines.push_back(absl::StrCat("MAIL FROM:<", env.mail_from(), ">", *params));
  for (const auto& rcpt : env.recipients()) {
    lines.push_back(
        absl::StrCat("RCPT TO:<", rcpt.address(), ">", RcptParams(rcpt, c)));
  }
  for (const auto& l : lines) {
    if (auto st = RefuseCrLf(l); !st.ok()) co_return TransactionResult{st};
  }
  ++c.transactions;
  const bool pipelining = c.pipelining_allowed() && c.Offers("PIPELINING");
  if (reused) {
    // A cached connection: RSET first, pipelined with the rest when the
    // next hop allows; a dead one shows here.
    absl::Status st = absl::OkStatus();
    if (pipelining) {
      std::string batch = "RSET\r\n";
      for (const auto& l : lines) absl::StrAppend(&batch, l, "\r\n");
      batch += "DATA\r\n";
      st = co_await c.Write(std::move(batch));
    } else {
      st = co_await c.Write("RSET\r\n");
    }
    if (!st.ok()) co_return TransactionResult{st, true};
    auto rset = co_await c.ReadReply();
    if (!rset.ok()) co_return TransactionResult{rset.status(), true};
    if (rset->code != 250) {
      c.Close();
      co_return TransactionResult{Connection::Refusal("RSET", *rset)};
    }
  } else if (pipelining) {
    std::string batch;
    for (const auto& l : lines) absl::StrAppend(&batch, l, "\r\n");
    batch += "DATA\r\n";
    auto st = co_await c.Write(std::move(batch));
    if (!st.ok()) co_return TransactionResult{st};
  }
  // One reply per line, in order: written already when pipelining, one
  // command at a time otherwise.
  auto next = [&c, pipelining](
                  const std::string& line) -> Awaitable<absl::StatusOr<Reply>> {
    if (pipelining) return c.ReadReply();
    return c.Command(line);
  };
  auto mail = co_await next(lines[0]);
  if (!mail.ok()) co_return TransactionResult{mail.status()};
  SubmitOutcome outcome;
  std::vector<std::string> deferrals;
  int accepted = 0;
  for (int i = 0; i < env.recipients_size(); ++i) {
    if (!pipelining && mail->code != 250) break;
    const auto& rcpt = env.recipients(i);
    auto r = co_await next(lines[i + 1]);
    if (!r.ok()) co_return TransactionResult{r.status()};
    if (mail->code != 250) continue;  // pipelined: the replies still come
    if (r->code == 250 || r->code == 251) {
      ++accepted;
    } else if (r->code >= 500) {
      outcome.refused.push_back(rcpt);
      outcome.refusals.push_back(
          absl::StrCat("<", rcpt.address(), ">: ", r->ToString()));
    } else {
      outcome.deferred.push_back(rcpt);
      outcome.deferrals.push_back(r->ToString());
      deferrals.push_back(
          absl::StrCat("<", rcpt.address(), ">: ", r->ToString()));
    }
  }
  outcome.deferred_reason = absl::StrJoin(deferrals, "; ");
  std::optional<Reply> data;
  if (pipelining) {
    auto d = co_await c.ReadReply();
    if (!d.ok()) co_return TransactionResult{d.status()};
    data = *d;
  }
  if (mail->code != 250 || accepted == 0) {
    if (data && data->code == 354) {
      // The next hop took DATA without a recipient: end the empty message
      // and do not trust this connection again.
      (void)co_await c.Command(".");
      c.Close();
    }
    if (mail->code != 250) {
      co_return TransactionResult{Connection::Refusal("MAIL", *mail)};
    }
    // Nothing to send: every recipient deferred or refused.
    co_return TransactionResult{std::move(outcome)};
  }
  if (!data) {
    auto d = co_await c.Command("DATA");
    if (!d.ok()) co_return TransactionResult{d.status()};
    data = *d;
  }
  if (data->code != 354) {
    co_return TransactionResult{Connection::Refusal("DATA", *data)};
  }
  // The content is read from the spool on the I/O thread (a local file,
  // usually in the page cache). Each chunk is written once the next read
  // tells whether it is the last: the last goes with the end of DATA.
  DotStuffState stuff;
  std::string chunk(kChunk, '\0');
  std::string pending;
  for (;;) {
    ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      c.Close();  // in the middle of DATA: the connection cannot go on
      co_return TransactionResult{absl::UnavailableError(
          absl::StrCat("read ", content_path, ": ", strerror(errno)))};
    }
    if (n == 0) break;
    if (!pending.empty()) {
      auto st = co_await c.Write(std::move(pending));
      if (!st.ok()) co_return TransactionResult{st};
    }
    pending = DotStuff(absl::string_view(chunk.data(), n), stuff);
  }
  // The body ends in CRLF (bare LFs became CRLF) or gets one.
  pending += stuff.at_line_start ? ".\r\n" : "\r\n.\r\n";
  auto end = co_await c.Write(std::move(pending));
  if (!end.ok()) co_return TransactionResult{end};
  auto done = co_await c.ReadReply();
  if (!done.ok()) co_return TransactionResult{done.status()};
  if (done->code != 250) {
    co_return TransactionResult{Connection::Refusal("the end of DATA", *done)};
  }
  co_return TransactionResult{std::move(outcome)};
}

}  // namespace sinkline::broker::relay
