#include "sink_broker/relay_connection.h"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker::relay {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;

namespace {

Counter& TlsCounter(const char* outcome) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_tls_total",
      "Connections to the next hop by TLS outcome: verified, encrypted "
      "(not verified), plaintext (not offered, --relay-tls=may or none), "
      "failed (handshake or verification; deferred), required (not "
      "offered but required; deferred).",
      {{"outcome", outcome}});
}

bool IsIp(const std::string& s) {
  boost::system::error_code ec;
  asio::ip::make_address(s, ec);
  return !ec;
}

}  // namespace

std::string Reply::ToString() const { return absl::StrCat(code, " ", text); }

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

absl::StatusOr<std::unique_ptr<ssl::context>> MakeTlsContext(
    const SmtpRelayOptions& options) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  boost::system::error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                       ssl::context::no_tlsv1_1,
                   ec);
  ctx->set_verify_mode(ssl::verify_none, ec);
  if (options.tls == RelayTls::kVerify || !options.tls_ca_file.empty()) {
    if (!options.tls_ca_file.empty()) {
      ctx->load_verify_file(options.tls_ca_file, ec);
      if (ec) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--relay-tls-ca-file ", options.tls_ca_file, ": ", ec.message()));
      }
    } else {
      ctx->set_default_verify_paths(ec);
    }
  }
  return ctx;
}

Connection::Connection(const SmtpRelayOptions& options, ssl::context* tls)
    : options_(options), tls_context_(tls) {}

std::string Connection::What() const {
  return absl::StrCat("next hop ", options_.next_hop,
                      peer_.empty() ? "" : " (" + peer_ + ")");
}

absl::Status Connection::Connect(const std::vector<RelayTarget>& targets) {
  absl::Status last = absl::UnavailableError(
      absl::StrCat("next hop ", options_.next_hop, ": no address to try"));
  for (const auto& target : targets) {
    std::optional<boost::system::error_code> result;
    tcp::endpoint connected;
    asio::async_connect(
        socket_, target.endpoints,
        [&](const boost::system::error_code& e, const tcp::endpoint& ep) {
          result = e;
          connected = ep;
        });
    peer_ = target.name;
    last = RunUntil(result, options_.connect_timeout, "connect");
    if (!last.ok()) continue;  // the next MX, if any
    target_name_ = target.name;
    peer_ = absl::StrCat(target.name, "[", connected.address().to_string(),
                         "]:", connected.port());
    // Each command is a small write that waits for its reply: without
    // TCP_NODELAY, Nagle holds it back behind the previous delayed ACK.
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    return absl::OkStatus();
  }
  return last;
}

absl::Status Connection::Ehlo() {
  auto ehlo = Command("EHLO " + options_.helo_name);
  if (!ehlo.ok()) return ehlo.status();
  keywords_.clear();
  if (ehlo->code != 250) {
    if (tls_) return Refusal("EHLO after STARTTLS", *ehlo);
    auto helo = Command("HELO " + options_.helo_name);
    if (!helo.ok()) return helo.status();
    if (helo->code != 250) return Refusal("HELO", *helo);
    return absl::OkStatus();
  }
  std::vector<std::string> lines = absl::StrSplit(ehlo->text, " / ");
  keywords_.assign(lines.begin() + (lines.empty() ? 0 : 1), lines.end());
  return absl::OkStatus();
}

absl::Status Connection::Open(const std::vector<RelayTarget>& targets) {
  if (auto st = Connect(targets); !st.ok()) return st;
  auto greeting = ReadReply();
  if (!greeting.ok()) return greeting.status();
  if (greeting->code != 220) return Refusal("the greeting", *greeting);
  if (auto st = Ehlo(); !st.ok()) return st;
  if (options_.tls == RelayTls::kNone) return absl::OkStatus();
  if (!Offers("STARTTLS")) {
    if (options_.tls == RelayTls::kMay) {
      TlsCounter("plaintext").Inc();
      return absl::OkStatus();
    }
    TlsCounter("required").Inc();
    Quit();
    return absl::UnavailableError(
        absl::StrCat(What(), " does not offer STARTTLS, which --relay-tls=",
                     RelayTlsName(options_.tls), " requires"));
  }
  if (auto st = StartTls(); !st.ok()) {
    TlsCounter("failed").Inc();
    Close();
    return st;
  }
  // RFC 3207 §4.2: everything learnt before TLS is forgotten.
  return Ehlo();
}

absl::Status Connection::StartTls() {
  auto r = Command("STARTTLS");
  if (!r.ok()) return r.status();
  if (r->code != 220) {
    // Offered, then refused: never carry on in plaintext on this
    // connection (a man in the middle would do exactly that).
    return absl::UnavailableError(
        absl::StrCat(What(), " answered STARTTLS with ", r->ToString(),
                     "; not going on in plaintext"));
  }
  if (!buffer_.empty()) {
    // Plaintext after the 220 would be read as if it came over TLS.
    return absl::UnavailableError(absl::StrCat(
        What(), " sent data after its STARTTLS reply; not going on"));
  }
  tls_.emplace(socket_, *tls_context_);
  SSL* ssl = tls_->native_handle();
  const std::string name = options_.tls_server_name.empty()
                               ? target_name_
                               : options_.tls_server_name;
  if (!IsIp(name)) SSL_set_tlsext_host_name(ssl, name.c_str());
  const bool verify = options_.tls == RelayTls::kVerify;
  if (verify) {
    boost::system::error_code ec;
    tls_->set_verify_mode(ssl::verify_peer, ec);
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (IsIp(name)) {
      X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    } else {
      X509_VERIFY_PARAM_set_hostflags(param,
                                      X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl, name.c_str());
    }
  }
  std::optional<boost::system::error_code> result;
  tls_->async_handshake(
      ssl::stream_base::client,
      [&](const boost::system::error_code& e) { result = e; });
  if (auto st = RunUntil(result, options_.command_timeout, "TLS handshake");
      !st.ok()) {
    const long v = SSL_get_verify_result(ssl);
    if (verify && v != X509_V_OK) {
      return absl::UnavailableError(
          absl::StrCat(What(), ": TLS certificate not verified for ", name,
                       ": ", X509_verify_cert_error_string(v)));
    }
    return st;
  }
  tls_state_ = verify ? "verified" : "encrypted";
  TlsCounter(tls_state_).Inc();
  spdlog::info("relay: TLS to {} {} ({}, {}, name {})", peer_,
               verify ? "verified" : "encrypted, not verified",
               SSL_get_version(ssl), SSL_get_cipher_name(ssl), name);
  return absl::OkStatus();
}

bool Connection::Offers(absl::string_view kw) const {
  for (const auto& k : keywords_) {
    if (absl::StartsWithIgnoreCase(k, kw) &&
        (k.size() == kw.size() || k[kw.size()] == ' ')) {
      return true;
    }
  }
  return false;
}

uint64_t Connection::SizeLimit() const {
  for (const auto& k : keywords_) {
    if (absl::StartsWithIgnoreCase(k, "SIZE ")) {
      uint64_t n = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(k.substr(5)), &n)) {
        return n;
      }
    }
  }
  return 0;
}

absl::StatusOr<Reply> Connection::ReadReply() {
  Reply reply;
  for (;;) {
    std::optional<boost::system::error_code> result;
    auto done = [&](const boost::system::error_code& e, size_t) { result = e; };
    auto buf = asio::dynamic_buffer(buffer_, 1 << 16);
    if (tls_) {
      asio::async_read_until(*tls_, buf, "\r\n", done);
    } else {
      asio::async_read_until(socket_, buf, "\r\n", done);
    }
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
      return absl::UnavailableError(absl::StrCat(
          What(), " sent a malformed reply: ", line.substr(0, 200)));
    }
    reply.code = code;
    if (!reply.text.empty()) reply.text += " / ";
    reply.text += line.size() > 4 ? line.substr(4) : "";
    if (line.size() == 3 || line[3] == ' ') return reply;
  }
}

absl::Status Connection::Write(const std::string& data,
                               std::optional<std::chrono::milliseconds> t) {
  std::optional<boost::system::error_code> result;
  auto done = [&](const boost::system::error_code& e, size_t) { result = e; };
  if (tls_) {
    asio::async_write(*tls_, asio::buffer(data), done);
  } else {
    asio::async_write(socket_, asio::buffer(data), done);
  }
  return RunUntil(result, t.value_or(options_.command_timeout), "write");
}

absl::StatusOr<Reply> Connection::Command(const std::string& line) {
  if (auto st = RefuseCrLf(line); !st.ok()) return st;
  if (auto st = Write(line + "\r\n"); !st.ok()) return st;
  return ReadReply();
}

void Connection::Quit() {
  if (socket_.is_open()) {
    (void)Write("QUIT\r\n", std::chrono::milliseconds(1000));
  }
  Close();
}

void Connection::Close() {
  boost::system::error_code ec;
  socket_.close(ec);
}

absl::Status Connection::Refusal(const std::string& step, const Reply& r) {
  const std::string what =
      absl::StrCat("next hop answered ", step, " with ", r.ToString());
  if (r.code >= 500) return absl::FailedPreconditionError(what);
  return absl::UnavailableError(what);
}

absl::Status Connection::RunUntil(
    std::optional<boost::system::error_code>& result,
    std::chrono::milliseconds timeout, const char* what) {
  io_.restart();
  io_.run_for(timeout);
  if (!result) {
    Close();
    io_.restart();
    io_.run();  // lets the cancelled operation finish
    return absl::UnavailableError(
        absl::StrCat(What(), ": timed out (", what, ")"));
  }
  if (*result) {
    Close();
    return absl::UnavailableError(
        absl::StrCat(What(), ": ", what, ": ", result->message()));
  }
  return absl::OkStatus();
}

}  // namespace sinkline::broker::relay
