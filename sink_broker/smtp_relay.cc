#include "sink_broker/smtp_relay.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/message_edit.h"
#include "sinkline/common/address.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

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

// One reply of the next hop: its code and its text lines joined.
struct Reply {
  int code = 0;
  std::string text;
  std::string ToString() const { return absl::StrCat(code, " ", text); }
};

absl::Status RefuseCrLf(absl::string_view line) {
  // Defence in depth: envelope edits are checked where they are made, but
  // a line with CR or LF in it would be two commands to the next hop.
  if (line.find_first_of("\r\n") == absl::string_view::npos) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "refusing to send the next hop a command with CR or LF in it: ",
      absl::CEscape(line.substr(0, 200))));
}

}  // namespace

namespace relay {

// A blocking SMTP client connection with a deadline on each step: every
// operation runs the private io_context until it completes or its time is up
// (then the socket is closed and the step fails).
class Connection {
 public:
  explicit Connection(const SmtpRelayOptions& options) : options_(options) {}

  absl::Status Connect() {
    std::string host = options_.next_hop, port = "25";
    if (!host.empty() && host.front() == '[') {
      const auto close = host.find(']');
      if (close == std::string::npos) {
        return absl::InvalidArgumentError("bad next hop " + options_.next_hop);
      }
      if (close + 1 < host.size() && host[close + 1] == ':') {
        port = host.substr(close + 2);
      }
      host = host.substr(1, close - 1);
    } else if (auto colon = host.rfind(':'); colon != std::string::npos) {
      port = host.substr(colon + 1);
      host = host.substr(0, colon);
    }
    tcp::resolver resolver(io_);
    boost::system::error_code ec;
    auto endpoints = resolver.resolve(host, port, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat(
          "next hop ", options_.next_hop, ": cannot resolve: ", ec.message()));
    }
    std::optional<boost::system::error_code> result;
    asio::async_connect(socket_, endpoints,
                        [&](const boost::system::error_code& e,
                            const tcp::endpoint&) { result = e; });
    if (auto st = RunUntil(result, options_.connect_timeout, "connect");
        !st.ok()) {
      return st;
    }
    // Each command is a small write that waits for its reply: without
    // TCP_NODELAY, Nagle holds it back behind the previous delayed ACK.
    socket_.set_option(tcp::no_delay(true), ec);
    return absl::OkStatus();
  }

  // Connect, greeting, EHLO (or HELO); remembers the EHLO keywords.
  absl::Status Open() {
    if (auto st = Connect(); !st.ok()) return st;
    auto greeting = ReadReply();
    if (!greeting.ok()) return greeting.status();
    if (greeting->code != 220) return Refusal("the greeting", *greeting);
    auto ehlo = Command("EHLO " + options_.helo_name);
    if (!ehlo.ok()) return ehlo.status();
    if (ehlo->code != 250) {
      auto helo = Command("HELO " + options_.helo_name);
      if (!helo.ok()) return helo.status();
      if (helo->code != 250) return Refusal("HELO", *helo);
    } else {
      std::vector<std::string> lines = absl::StrSplit(ehlo->text, " / ");
      keywords_.assign(lines.begin() + (lines.empty() ? 0 : 1), lines.end());
    }
    return absl::OkStatus();
  }

  bool Offers(absl::string_view kw) const {
    for (const auto& k : keywords_) {
      if (absl::StartsWithIgnoreCase(k, kw) &&
          (k.size() == kw.size() || k[kw.size()] == ' ')) {
        return true;
      }
    }
    return false;
  }

  absl::StatusOr<Reply> ReadReply() {
    Reply reply;
    for (;;) {
      std::optional<boost::system::error_code> result;
      asio::async_read_until(
          socket_, asio::dynamic_buffer(buffer_, 1 << 16), "\r\n",
          [&](const boost::system::error_code& e, size_t) { result = e; });
      if (auto st = RunUntil(result, options_.command_timeout, "reply");
          !st.ok()) {
        return st;
      }
      const auto end = buffer_.find("\r\n");
      std::string line = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      int code = 0;
      if (line.size() < 3 || !absl::SimpleAtoi(line.substr(0, 3), &code) ||
          code < 200 || code > 599 ||
          (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
        Close();
        return absl::UnavailableError(
            absl::StrCat("next hop ", options_.next_hop,
                         " sent a malformed reply: ", line.substr(0, 200)));
      }
      reply.code = code;
      if (!reply.text.empty()) reply.text += " / ";
      reply.text += line.size() > 4 ? line.substr(4) : "";
      if (line.size() == 3 || line[3] == ' ') return reply;
    }
  }

  absl::Status Write(const std::string& data,
                     std::optional<std::chrono::milliseconds> timeout = {}) {
    std::optional<boost::system::error_code> result;
    asio::async_write(
        socket_, asio::buffer(data),
        [&](const boost::system::error_code& e, size_t) { result = e; });
    return RunUntil(result, timeout.value_or(options_.command_timeout),
                    "write");
  }

  // One command line (refused if it holds CR or LF) and its reply.
  absl::StatusOr<Reply> Command(const std::string& line) {
    if (auto st = RefuseCrLf(line); !st.ok()) return st;
    if (auto st = Write(line + "\r\n"); !st.ok()) return st;
    return ReadReply();
  }

  // Polite close of a connection nobody waits on: QUIT without waiting for
  // the reply.
  void Quit() {
    if (socket_.is_open()) {
      (void)Write("QUIT\r\n", std::chrono::milliseconds(1000));
    }
    Close();
  }

  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

  bool open() const { return socket_.is_open(); }
  bool pipelining_allowed() const { return options_.pipelining; }
  int transactions = 0;
  std::chrono::steady_clock::time_point idle_since;

  // A reply that ends the attempt for the whole message.
  static absl::Status Refusal(const std::string& step, const Reply& r) {
    const std::string what =
        absl::StrCat("next hop answered ", step, " with ", r.ToString());
    if (r.code >= 500) return absl::FailedPreconditionError(what);
    return absl::UnavailableError(what);
  }

 private:
  absl::Status RunUntil(std::optional<boost::system::error_code>& result,
                        std::chrono::milliseconds timeout, const char* what) {
    io_.restart();
    io_.run_for(timeout);
    if (!result) {
      Close();
      io_.restart();
      io_.run();  // lets the cancelled operation finish
      return absl::UnavailableError(absl::StrCat("next hop ", options_.next_hop,
                                                 ": timed out (", what, ")"));
    }
    if (*result) {
      Close();
      return absl::UnavailableError(absl::StrCat(
          "next hop ", options_.next_hop, ": ", what, ": ", result->message()));
    }
    return absl::OkStatus();
  }

  const SmtpRelayOptions& options_;
  asio::io_context io_;
  tcp::socket socket_{io_};
  std::string buffer_;
  std::vector<std::string> keywords_;
};

}  // namespace relay

using relay::Connection;

// Idle connections to the next hop, newest last, and the bound on messages
// in flight. A reaper closes connections idle longer than `cache_idle`.
class SmtpRelayBackend::Cache {
 public:
  explicit Cache(const SmtpRelayOptions& options) : options_(options) {
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

  // Blocks while `destination_concurrency` messages are in flight.
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
    return in_flight_ < std::max(1, options_.destination_concurrency);
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
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

namespace {

std::string EsmtpParams(const v1::Envelope& envelope, const Connection& c,
                        uint64_t size) {
  std::string out;
  if (c.Offers("SIZE")) absl::StrAppend(&out, " SIZE=", size);
  for (const auto& p : envelope.mail_params()) {
    const std::string key = absl::AsciiStrToUpper(p.key());
    if ((key == "BODY" && c.Offers("8BITMIME")) ||
        (key == "SMTPUTF8" && c.Offers("SMTPUTF8")) ||
        ((key == "RET" || key == "ENVID") && c.Offers("DSN"))) {
      absl::StrAppend(&out, " ", key);
      if (!p.value().empty()) absl::StrAppend(&out, "=", p.value());
    }
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
  for (const auto& p : env.mail_params()) {
    if (absl::EqualsIgnoreCase(p.key(), "SMTPUTF8") && !c.Offers("SMTPUTF8")) {
      return {absl::FailedPreconditionError(
          "the next hop does not offer SMTPUTF8, which the message needs "
          "(5.6.7)")};
    }
  }
  std::vector<std::string> lines;
  lines.push_back(absl::StrCat("MAIL FROM:<", env.mail_from(), ">",
                               EsmtpParams(env, c, entry.size())));
  for (const auto& rcpt : env.recipients()) {
    lines.push_back(absl::StrCat("RCPT TO:<", rcpt.address(), ">"));
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
    : options_(std::move(options)), cache_(std::make_unique<Cache>(options_)) {}

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
      c = std::make_unique<Connection>(options_);
      ConnectionsCounter("opened").Inc();
      if (auto st = c->Open(); !st.ok()) {
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
