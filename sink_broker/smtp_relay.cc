#include "sink_broker/smtp_relay.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "sink_broker/message_edit.h"
#include "sinkline/common/address.h"

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

// One reply of the next hop: its code and its text lines joined.
struct Reply {
  int code = 0;
  std::string text;
  std::string ToString() const { return absl::StrCat(code, " ", text); }
};

// A blocking SMTP client connection with a deadline on each step: every
// operation runs the private io_context until it completes or its time is up
// (then the socket is closed and the step fails).
class Client {
 public:
  explicit Client(const SmtpRelayOptions& options) : options_(options) {}

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

  absl::Status Write(const std::string& data) {
    std::optional<boost::system::error_code> result;
    asio::async_write(
        socket_, asio::buffer(data),
        [&](const boost::system::error_code& e, size_t) { result = e; });
    return RunUntil(result, options_.command_timeout, "write");
  }

  absl::StatusOr<Reply> Command(const std::string& line) {
    // Defence in depth: envelope edits are checked where they are made, but
    // a line with CR or LF in it would be two commands to the next hop.
    if (line.find_first_of("\r\n") != std::string::npos) {
      return absl::FailedPreconditionError(
          absl::StrCat("refusing to send the next hop a command with CR or LF "
                       "in it: ",
                       absl::CEscape(line.substr(0, 200))));
    }
    if (auto st = Write(line + "\r\n"); !st.ok()) return st;
    return ReadReply();
  }

  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
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
};

// A reply that ends the attempt for the whole message.
absl::Status Refusal(const std::string& step, const Reply& r) {
  const std::string what =
      absl::StrCat("next hop answered ", step, " with ", r.ToString());
  if (r.code >= 500) return absl::FailedPreconditionError(what);
  return absl::UnavailableError(what);
}

std::string EsmtpParams(const v1::Envelope& envelope,
                        const std::vector<std::string>& keywords,
                        uint64_t size) {
  auto offered = [&](absl::string_view kw) {
    for (const auto& k : keywords) {
      if (absl::StartsWithIgnoreCase(k, kw) &&
          (k.size() == kw.size() || k[kw.size()] == ' ')) {
        return true;
      }
    }
    return false;
  };
  std::string out;
  if (offered("SIZE")) absl::StrAppend(&out, " SIZE=", size);
  for (const auto& p : envelope.mail_params()) {
    const std::string key = absl::AsciiStrToUpper(p.key());
    if ((key == "BODY" && offered("8BITMIME")) ||
        (key == "SMTPUTF8" && offered("SMTPUTF8")) ||
        ((key == "RET" || key == "ENVID") && offered("DSN"))) {
      absl::StrAppend(&out, " ", key);
      if (!p.value().empty()) absl::StrAppend(&out, "=", p.value());
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<SubmitOutcome> SmtpRelayBackend::Submit(
    const v1::QueueEntry& entry, const std::string& content_path) {
  int fd = ::open(content_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("open ", content_path, ": ", strerror(errno)));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

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

  Client c(options_);
  if (auto st = c.Connect(); !st.ok()) return st;
  auto greeting = c.ReadReply();
  if (!greeting.ok()) return greeting.status();
  if (greeting->code != 220) return Refusal("the greeting", *greeting);
  auto ehlo = c.Command("EHLO " + options_.helo_name);
  if (!ehlo.ok()) return ehlo.status();
  std::vector<std::string> keywords;
  if (ehlo->code != 250) {
    auto helo = c.Command("HELO " + options_.helo_name);
    if (!helo.ok()) return helo.status();
    if (helo->code != 250) return Refusal("HELO", *helo);
  } else {
    std::vector<std::string> lines = absl::StrSplit(ehlo->text, " / ");
    keywords.assign(lines.begin() + (lines.empty() ? 0 : 1), lines.end());
  }
  for (const auto& p : entry.envelope().mail_params()) {
    if (absl::EqualsIgnoreCase(p.key(), "SMTPUTF8")) {
      bool offered = false;
      for (const auto& k : keywords)
        offered |= absl::EqualsIgnoreCase(k, "SMTPUTF8");
      if (!offered) {
        return absl::FailedPreconditionError(
            "the next hop does not offer SMTPUTF8, which the message needs "
            "(5.6.7)");
      }
    }
  }
  auto mail = c.Command(
      absl::StrCat("MAIL FROM:<", entry.envelope().mail_from(), ">",
                   EsmtpParams(entry.envelope(), keywords, entry.size())));
  if (!mail.ok()) return mail.status();
  if (mail->code != 250) return Refusal("MAIL", *mail);

  SubmitOutcome outcome;
  std::vector<std::string> deferrals;
  int accepted = 0;
  for (const auto& rcpt : entry.envelope().recipients()) {
    auto r = c.Command(absl::StrCat("RCPT TO:<", rcpt.address(), ">"));
    if (!r.ok()) return r.status();
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
  if (accepted == 0) {
    (void)c.Command("QUIT");
    return outcome;  // nothing to send: every recipient deferred or refused
  }
  auto data = c.Command("DATA");
  if (!data.ok()) return data.status();
  if (data->code != 354) return Refusal("DATA", *data);
  DotStuffState stuff;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::UnavailableError(
          absl::StrCat("read ", content_path, ": ", strerror(errno)));
    }
    if (n == 0) break;
    if (auto st = c.Write(DotStuff(absl::string_view(buf, n), stuff));
        !st.ok()) {
      return st;
    }
  }
  // The body ends in CRLF (bare LFs became CRLF) or gets one.
  if (auto st = c.Write(stuff.at_line_start ? ".\r\n" : "\r\n.\r\n");
      !st.ok()) {
    return st;
  }
  auto end = c.ReadReply();
  if (!end.ok()) return end.status();
  if (end->code != 250) return Refusal("the end of DATA", *end);
  (void)c.Command("QUIT");
  return outcome;
}

}  // namespace sinkline::broker
