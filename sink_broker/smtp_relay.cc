#include "sink_broker/smtp_relay.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/ssl.hpp>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/concurrency_window.h"
#include "sink_broker/message_edit.h"
#include "sink_broker/relay_connection.h"
#include "sinkline/common/address.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

absl::StatusOr<RelayTls> ParseRelayTls(absl::string_view name) {
  if (name == "none") return RelayTls::kNone;
  if (name == "may") return RelayTls::kMay;
  if (name == "encrypt") return RelayTls::kEncrypt;
  if (name == "verify") return RelayTls::kVerify;
  return absl::InvalidArgumentError(absl::StrCat(
      "--relay-tls=", name, ": none, may, encrypt or verify expected"));
}

const char* RelayTlsName(RelayTls tls) {
  switch (tls) {
    case RelayTls::kNone:
      return "none";
    case RelayTls::kMay:
      return "may";
    case RelayTls::kEncrypt:
      return "encrypt";
    case RelayTls::kVerify:
      return "verify";
  }
  return "?";
}

std::string DotStuff(absl::string_view data, DotStuffState& state) {
  std::string out;
  out.reserve(data.size() + 16);
  for (char c : data) {
    if (c == '\n' && !state.after_cr) out.push_back('\r');
    if (state.at_line_start && c == '.') out.push_back('.');
    out.push_back(c);
    state.at_line_start = c == '\n';
    state.after_cr = c == '\r';
  }
  return out;
}

namespace {

Counter& ConnectionsCounter(const char* how) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_connections_total",
      "SMTP connections to the next hop: opened, or reused from the cache.",
      {{"how", how}});
}

Counter& DeliveriesCounter(const char* result) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_deliveries_total",
      "Recipients by what the next hop did: delivered, deferred (4xx, down, "
      "timeout), refused (5xx).",
      {{"result", result}});
}

Gauge& InFlightGauge() {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_broker_relay_in_flight",
      "Messages being handed to the next hop now.");
}

Gauge& WindowGauge(const std::string& destination) {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_broker_relay_concurrency_window",
      "Messages that may be in flight to the destination now (slow start: "
      "from --relay-initial-destination-concurrency, one more per delivery "
      "up to --relay-destination-concurrency, one fewer per failed "
      "connection).",
      {{"destination", destination}});
}

}  // namespace

using relay::Connection;
using relay::RefuseCrLf;
using relay::Reply;

// Idle connections to the next hop, newest last, and the bound on messages
// in flight (the slow-start window). A reaper closes connections idle
// longer than `cache_idle`.
class SmtpRelayBackend::Cache {
 public:
  explicit Cache(const SmtpRelayOptions& options)
      : options_(options),
        window_(options.initial_destination_concurrency,
                options.destination_concurrency),
        window_gauge_(WindowGauge(options.next_hop)) {
    window_gauge_.Set(window_.window());
    if (options_.cache_idle.count() > 0) {
      reaper_ = std::thread([this] { Reap(); });
    }
  }
  ~Cache() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (reaper_.joinable()) reaper_.join();
    absl::MutexLock lock(&mu_);
    for (auto& c : idle_) c->Quit();
    idle_.clear();
  }

  // Blocks while the window's worth of messages are in flight.
  void Acquire() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Cache::HasSlot));
    ++in_flight_;
    InFlightGauge().Add(1);
  }
  void ReleaseSlot() {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    InFlightGauge().Add(-1);
  }

  // Slow start's feedback: a delivery completed in step with the next hop,
  // or a connection to it failed.
  void Feedback(bool success) {
    absl::MutexLock lock(&mu_);
    const int before = window_.window();
    if (success) {
      window_.Success();
    } else {
      window_.Failure();
    }
    if (window_.window() != before) window_gauge_.Set(window_.window());
  }

  // The newest idle connection still fresh enough, or null.
  std::unique_ptr<Connection> Take() {
    std::vector<std::unique_ptr<Connection>> stale;
    std::unique_ptr<Connection> out;
    {
      absl::MutexLock lock(&mu_);
      const auto now = std::chrono::steady_clock::now();
      while (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        if (now - c->idle_since < options_.cache_idle) {
          out = std::move(c);
          break;
        }
        stale.push_back(std::move(c));
      }
    }
    for (auto& c : stale) c->Quit();
    return out;
  }

  // After a transaction: kept for the next message, or closed.
  void Put(std::unique_ptr<Connection> c) {
    if (options_.cache_idle.count() <= 0 || !c->open() ||
        (options_.reuse_limit > 0 && c->transactions >= options_.reuse_limit)) {
      c->Quit();
      return;
    }
    c->idle_since = std::chrono::steady_clock::now();
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_ && static_cast<int>(idle_.size()) <
                            std::max(1, options_.destination_concurrency)) {
        idle_.push_back(std::move(c));
        return;
      }
    }
    c->Quit();
  }

 private:
  bool HasSlot() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return window_.Admits(in_flight_);
  }

  void Reap() {
    const auto period =
        std::max(std::chrono::milliseconds(50), options_.cache_idle / 2);
    for (;;) {
      std::vector<std::unique_ptr<Connection>> stale;
      {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                             absl::FromChrono(period));
        if (stopping_) return;
        const auto now = std::chrono::steady_clock::now();
        // Oldest first: idle_ is in the order connections were put back.
        while (!idle_.empty() &&
               now - idle_.front()->idle_since >= options_.cache_idle) {
          stale.push_back(std::move(idle_.front()));
          idle_.pop_front();
        }
      }
      for (auto& c : stale) c->Quit();
    }
  }

  const SmtpRelayOptions& options_;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  ConcurrencyWindow window_ ABSL_GUARDED_BY(mu_);
  Gauge& window_gauge_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

namespace {

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

// Why a transaction on a cached connection ended: `stale` when the
// connection turned out dead before the next hop answered anything of this
// transaction (then a fresh connection is tried; nothing was delivered).
struct TransactionResult {
  absl::StatusOr<SubmitOutcome> outcome;
  bool stale = false;
};

TransactionResult Transaction(Connection& c, bool reused,
                              const v1::QueueEntry& entry, int fd,
                              const std::string& content_path) {
  const v1::Envelope& env = entry.envelope();
  auto params = MailParams(entry, c);
  if (!params.ok()) return {params.status()};
  std::vector<std::string> lines;
  lines.push_back(absl::StrCat("MAIL FROM:<", env.mail_from(), ">", *params));
  for (const auto& rcpt : env.recipients()) {
    lines.push_back(
        absl::StrCat("RCPT TO:<", rcpt.address(), ">", RcptParams(rcpt, c)));
  }
  for (const auto& l : lines) {
    if (auto st = RefuseCrLf(l); !st.ok()) return {st};
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
      st = c.Write(batch);
    } else {
      st = c.Write("RSET\r\n");
    }
    if (!st.ok()) return {st, true};
    auto rset = c.ReadReply();
    if (!rset.ok()) return {rset.status(), true};
    if (rset->code != 250) {
      c.Close();
      return {Connection::Refusal("RSET", *rset)};
    }
  } else if (pipelining) {
    std::string batch;
    for (const auto& l : lines) absl::StrAppend(&batch, l, "\r\n");
    batch += "DATA\r\n";
    if (auto st = c.Write(batch); !st.ok()) return {st};
  }
  // One reply per line, in order: written already when pipelining, one
  // command at a time otherwise.
  auto next = [&](const std::string& line) -> absl::StatusOr<Reply> {
    if (pipelining) return c.ReadReply();
    return c.Command(line);
  };
  auto mail = next(lines[0]);
  if (!mail.ok()) return {mail.status()};
  SubmitOutcome outcome;
  std::vector<std::string> deferrals;
  int accepted = 0;
  for (int i = 0; i < env.recipients_size(); ++i) {
    if (!pipelining && mail->code != 250) break;
    const auto& rcpt = env.recipients(i);
    auto r = next(lines[i + 1]);
    if (!r.ok()) return {r.status()};
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
    auto d = c.ReadReply();
    if (!d.ok()) return {d.status()};
    data = *d;
  }
  if (mail->code != 250 || accepted == 0) {
    if (data && data->code == 354) {
      // The next hop took DATA without a recipient: end the empty message
      // and do not trust this connection again.
      (void)c.Command(".");
      c.Close();
    }
    if (mail->code != 250) return {Connection::Refusal("MAIL", *mail)};
    return {outcome};  // nothing to send: every recipient deferred or refused
  }
  if (!data) {
    auto d = c.Command("DATA");
    if (!d.ok()) return {d.status()};
    data = *d;
  }
  if (data->code != 354) return {Connection::Refusal("DATA", *data)};
  DotStuffState stuff;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      c.Close();  // in the middle of DATA: the connection cannot go on
      return {absl::UnavailableError(
          absl::StrCat("read ", content_path, ": ", strerror(errno)))};
    }
    if (n == 0) break;
    if (auto st = c.Write(DotStuff(absl::string_view(buf, n), stuff));
        !st.ok()) {
      return {st};
    }
  }
  // The body ends in CRLF (bare LFs became CRLF) or gets one.
  auto end = c.Write(stuff.at_line_start ? ".\r\n" : "\r\n.\r\n");
  if (!end.ok()) return {end};
  auto done = c.ReadReply();
  if (!done.ok()) return {done.status()};
  if (done->code != 250) return {Connection::Refusal("the end of DATA", *done)};
  return {outcome};
}

}  // namespace

SmtpRelayBackend::SmtpRelayBackend(SmtpRelayOptions options)
    : options_(std::move(options)),
      hop_(ParseNextHop(options_.next_hop)),
      cache_(std::make_unique<Cache>(options_)) {
  init_ = hop_.status();
  if (options_.tls != RelayTls::kNone) {
    auto ctx = relay::MakeTlsContext(options_);
    if (ctx.ok()) {
      tls_ = std::move(*ctx);
    } else if (init_.ok()) {
      init_ = ctx.status();
    }
  }
}

absl::StatusOr<std::unique_ptr<SmtpRelayBackend>> SmtpRelayBackend::Create(
    SmtpRelayOptions options) {
  auto backend = std::make_unique<SmtpRelayBackend>(std::move(options));
  if (!backend->init_.ok()) return backend->init_;
  return backend;
}

SmtpRelayBackend::~SmtpRelayBackend() = default;

absl::StatusOr<SubmitOutcome> SmtpRelayBackend::Submit(
    const v1::QueueEntry& entry, const std::string& content_path) {
  // Nothing that is not a mailbox goes into MAIL FROM / RCPT TO, whatever
  // wrote the envelope (the edits were checked; a spool file may be old).
  const bool utf8 = EnvelopeIsUtf8(entry.envelope());
  if (auto st =
          ValidateEnvelopeAddress(entry.envelope().mail_from(), true, utf8);
      !st.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("sender: ", st.message()));
  }
  for (const auto& r : entry.envelope().recipients()) {
    if (auto st = ValidateEnvelopeAddress(r.address(), false, utf8); !st.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("recipient: ", st.message()));
    }
  }
  int fd = ::open(content_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("open ", content_path, ": ", strerror(errno)));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  cache_->Acquire();
  struct SlotReleaser {
    Cache* cache;
    ~SlotReleaser() { cache->ReleaseSlot(); }
  } releaser{cache_.get()};

  absl::StatusOr<SubmitOutcome> result;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_ptr<Connection> c = cache_->Take();
    const bool reused = c != nullptr;
    if (reused) {
      ConnectionsCounter("reused").Inc();
    } else {
      if (!init_.ok()) {
        result = absl::UnavailableError(init_.message());
        break;
      }
      auto targets = ResolveNextHop(*hop_, options_.dns);
      if (!targets.ok()) {
        result = targets.status();
        break;
      }
      c = std::make_unique<Connection>(options_, tls_.get());
      ConnectionsCounter("opened").Inc();
      if (auto st = c->Open(*targets); !st.ok()) {
        cache_->Feedback(false);  // refused, timed out, 4xx at connect, TLS
        result = st;
        break;
      }
    }
    auto t = Transaction(*c, reused, entry, fd, content_path);
    if (t.stale && reused && ::lseek(fd, 0, SEEK_SET) == 0) {
      continue;  // the cached connection was dead: try a fresh one
    }
    result = std::move(t.outcome);
    if (result.ok() ||
        result.status().code() == absl::StatusCode::kFailedPrecondition) {
      cache_->Feedback(true);
      cache_->Put(std::move(c));  // in step with the next hop: reusable
    } else {
      c->Close();
    }
    break;
  }
  if (result.ok()) {
    const int refused = result->refused.size();
    const int deferred = result->deferred.size();
    DeliveriesCounter("delivered")
        .Inc(entry.envelope().recipients_size() - refused - deferred);
    if (refused) DeliveriesCounter("refused").Inc(refused);
    if (deferred) DeliveriesCounter("deferred").Inc(deferred);
  } else {
    DeliveriesCounter(result.status().code() ==
                              absl::StatusCode::kFailedPrecondition
                          ? "refused"
                          : "deferred")
        .Inc(entry.envelope().recipients_size());
  }
  return result;
}

}  // namespace sinkline::broker
