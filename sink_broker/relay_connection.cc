#include "sink_broker/relay_connection.h"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <memory>

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

Connection::Connection(asio::io_context& io, const SmtpRelayOptions& options,
                       ssl::context* tls)
    : options_(options), tls_context_(tls), socket_(io) {}

template <typename Op>
Awaitable<boost::system::error_code> Connection::Timed(
    std::chrono::milliseconds timeout, Op op) {
  // The timer's handler may run after this step ended (its expiry already
  // queued): `state` tells it so, and it then touches nothing.
  struct State {
    bool done = false;
    bool fired = false;
  };
  auto state = std::make_shared<State>();
  asio::steady_timer timer(socket_.get_executor());
  timer.expires_after(timeout);
  timer.async_wait([state, this](const boost::system::error_code& ec) {
    if (ec || state->done) return;
    state->fired = true;
    boost::system::error_code ignored;
    socket_.close(ignored);  // the step ends with operation_aborted
  });
  boost::system::error_code ec;
  co_await op(asio::redirect_error(asio::use_awaitable, ec));
  state->done = true;
  timer.cancel();
  if (state->fired) ec = asio::error::timed_out;
  co_return ec;
}

absl::Status Connection::Check(const boost::system::error_code& ec,
                               const char* what) {
  if (!ec) return absl::OkStatus();
  Close();
  if (ec == asio::error::timed_out) {
    return absl::UnavailableError(
        absl::StrCat(What(), ": timed out (", what, ")"));
  }
  return absl::UnavailableError(
      absl::StrCat(What(), ": ", what, ": ", ec.message()));
}

std::string Connection::What() const {
  return absl::StrCat("next hop ", options_.next_hop,
                      peer_.empty() ? "" : " (" + peer_ + ")");
}

Awaitable<absl::Status> Connection::Connect(
    const std::vector<RelayTarget>& targets) {
  absl::Status last = absl::UnavailableError(
      absl::StrCat("next hop ", options_.next_hop, ": no address to try"));
  for (const auto& target : targets) {
    peer_ = target.name;
    const auto ec = co_await Timed(options_.connect_timeout, [&](auto token) {
      return asio::async_connect(socket_, target.endpoints, std::move(token));
    });
    last = Check(ec, "connect");
    if (!last.ok()) continue;  // the next MX, if any
    boost::system::error_code ep_ec;
    const tcp::endpoint connected = socket_.remote_endpoint(ep_ec);
    target_name_ = target.name;
    peer_ = absl::StrCat(target.name, "[", connected.address().to_string(),
                         "]:", connected.port());
    // Each command is a small write that waits for its reply: without
    // TCP_NODELAY, Nagle holds it back behind the previous delayed ACK.
    boost::system::error_code nodelay_ec;
    socket_.set_option(tcp::no_delay(true), nodelay_ec);
    co_return absl::OkStatus();
  }
  co_return last;
}

Awaitable<absl::Status> Connection::Ehlo() {
  auto ehlo = co_await Command("EHLO " + options_.helo_name);
  if (!ehlo.ok()) co_return ehlo.status();
  keywords_.clear();
  if (ehlo->code != 250) {
    if (tls_) co_return Refusal("EHLO after STARTTLS", *ehlo);
    auto helo = co_await Command("HELO " + options_.helo_name);
    if (!helo.ok()) co_return helo.status();
    if (helo->code != 250) co_return Refusal("HELO", *helo);
    co_return absl::OkStatus();
  }
  std::vector<std::string> lines = absl::StrSplit(ehlo->text, " / ");
  keywords_.assign(lines.begin() + (lines.empty() ? 0 : 1), lines.end());
  co_return absl::OkStatus();
}

Awaitable<absl::Status> Connection::Open(std::vector<RelayTarget> targets) {
  absl::Status st = co_await Connect(targets);
  if (!st.ok()) co_return st;
  auto greeting = co_await ReadReply();
  if (!greeting.ok()) co_return greeting.status();
  if (greeting->code != 220) co_return Refusal("the greeting", *greeting);
  st = co_await Ehlo();
  if (!st.ok()) co_return st;
  if (options_.tls == RelayTls::kNone) co_return absl::OkStatus();
  if (!Offers("STARTTLS")) {
    if (options_.tls == RelayTls::kMay) {
      TlsCounter("plaintext").Inc();
      co_return absl::OkStatus();
    }
    TlsCounter("required").Inc();
    co_await Quit();
    co_return absl::UnavailableError(
        absl::StrCat(What(), " does not offer STARTTLS, which --relay-tls=",
                     RelayTlsName(options_.tls), " requires"));
  }
  st = co_await StartTls();
  if (!st.ok()) {
    TlsCounter("failed").Inc();
    Close();
    co_return st;
  }
  // RFC 3207 §4.2: everything learnt before TLS is forgotten.
  co_return co_await Ehlo();
}

Awaitable<absl::Status> Connection::StartTls() {
  auto r = co_await Command("STARTTLS");
  if (!r.ok()) co_return r.status();
  if (r->code != 220) {
    // Offered, then refused: never carry on in plaintext on this
    // connection (a man in the middle would do exactly that).
    co_return absl::UnavailableError(
        absl::StrCat(What(), " answered STARTTLS with ", r->ToString(),
                     "; not going on in plaintext"));
  }
  if (!buffer_.empty()) {
    // Plaintext after the 220 would be read as if it came over TLS.
    co_return absl::UnavailableError(absl::StrCat(
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
  const auto ec = co_await Timed(options_.command_timeout, [&](auto token) {
    return tls_->async_handshake(ssl::stream_base::client, std::move(token));
  });
  if (auto st = Check(ec, "TLS handshake"); !st.ok()) {
    const long v = SSL_get_verify_result(ssl);
    if (verify && v != X509_V_OK) {
      co_return absl::UnavailableError(
          absl::StrCat(What(), ": TLS certificate not verified for ", name,
                       ": ", X509_verify_cert_error_string(v)));
    }
    co_return st;
  }
  tls_state_ = verify ? "verified" : "encrypted";
  TlsCounter(tls_state_).Inc();
  spdlog::info("relay: TLS to {} {} ({}, {}, name {})", peer_,
               verify ? "verified" : "encrypted, not verified",
               SSL_get_version(ssl), SSL_get_cipher_name(ssl), name);
  co_return absl::OkStatus();
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

Awaitable<absl::StatusOr<Reply>> Connection::ReadReply() {
  Reply reply;
  for (;;) {
    // A whole line may be buffered already (pipelined replies).
    if (buffer_.find("\r\n") == std::string::npos) {
      const auto ec = co_await Timed(options_.command_timeout, [&](auto token) {
        auto buf = asio::dynamic_buffer(buffer_, 1 << 16);
        if (tls_) {
          return asio::async_read_until(*tls_, buf, "\r\n", std::move(token));
        }
        return asio::async_read_until(socket_, buf, "\r\n", std::move(token));
      });
      if (auto st = Check(ec, "reply"); !st.ok()) co_return st;
    }
    const auto end = buffer_.find("\r\n");
    std::string line = buffer_.substr(0, end);
    buffer_.erase(0, end + 2);
    int code = 0;
    if (line.size() < 3 || !absl::SimpleAtoi(line.substr(0, 3), &code) ||
        code < 200 || code > 599 ||
        (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      Close();
      co_return absl::UnavailableError(absl::StrCat(
          What(), " sent a malformed reply: ", line.substr(0, 200)));
    }
    reply.code = code;
    if (!reply.text.empty()) reply.text += " / ";
    reply.text += line.size() > 4 ? line.substr(4) : "";
    if (line.size() == 3 || line[3] == ' ') co_return reply;
  }
}

Awaitable<absl::Status> Connection::Write(
    std::string data, std::optional<std::chrono::milliseconds> t) {
  const auto ec =
      co_await Timed(t.value_or(options_.command_timeout), [&](auto token) {
        if (tls_) {
          return asio::async_write(*tls_, asio::buffer(data), std::move(token));
        }
        return asio::async_write(socket_, asio::buffer(data), std::move(token));
      });
  co_return Check(ec, "write");
}

Awaitable<absl::StatusOr<Reply>> Connection::Command(std::string line) {
  if (auto st = RefuseCrLf(line); !st.ok()) co_return st;
  absl::Status st = co_await Write(line + "\r\n");
  if (!st.ok()) co_return st;
  co_return co_await ReadReply();
}

Awaitable<void> Connection::Quit() {
  if (socket_.is_open()) {
    (void)co_await Write("QUIT\r\n", std::chrono::milliseconds(1000));
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

}  // namespace sinkline::broker::relay
