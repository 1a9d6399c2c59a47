// One SMTP client connection to the next hop, asynchronous: every step is
// a C++20 coroutine on the relay's io_context (no thread waits on the
// network), with a deadline (a timer closes the socket when it passes; the
// step fails and the connection is done). Open() connects to the first
// target that answers, reads the greeting, says EHLO, and upgrades to TLS
// by STARTTLS (RFC 3207) as --relay-tls asks, saying EHLO again over TLS.
//
// A connection is used by one coroutine at a time, on the relay's single
// I/O thread.
#pragma once

// clang-format off
#include <utility>  // first: boost/asio/awaitable.hpp uses std::exchange
// clang-format on
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sink_broker/relay_dns.h"
#include "sink_broker/smtp_relay.h"

namespace sinkline::broker::relay {

// One reply of the next hop: its code and its text lines joined.
struct Reply {
  int code = 0;
  std::string text;
  std::string ToString() const;
};

// FAILED_PRECONDITION for a line with CR or LF in it (it would be two
// commands to the next hop).
absl::Status RefuseCrLf(absl::string_view line);

// The TLS client context for `options` (CA file when verifying);
// INVALID_ARGUMENT when the CA file cannot be loaded.
absl::StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeTlsContext(
    const SmtpRelayOptions& options);

template <typename T>
using Awaitable = boost::asio::awaitable<T>;

class Connection {
 public:
  // `tls` may be null when options.tls is kNone.
  Connection(boost::asio::io_context& io, const SmtpRelayOptions& options,
             boost::asio::ssl::context* tls);

  // Connect (first target that accepts), greeting, EHLO (or HELO),
  // STARTTLS and EHLO again when the TLS policy says so. UNAVAILABLE for
  // anything that should be tried again later, FAILED_PRECONDITION for a
  // 5xx greeting or HELO.
  Awaitable<absl::Status> Open(std::vector<RelayTarget> targets);

  // Whether the last EHLO listed `keyword`.
  bool Offers(absl::string_view keyword) const;
  // SIZE's value in the last EHLO (0: offered without a limit, or not).
  uint64_t SizeLimit() const;

  Awaitable<absl::StatusOr<Reply>> ReadReply();
  Awaitable<absl::Status> Write(
      std::string data, std::optional<std::chrono::milliseconds> timeout = {});
  // One command line (refused if it holds CR or LF) and its reply.
  Awaitable<absl::StatusOr<Reply>> Command(std::string line);
  // Polite close of a connection nobody waits on: QUIT without waiting for
  // the reply.
  Awaitable<void> Quit();
  void Close();

  bool open() const { return socket_.is_open(); }
  bool pipelining_allowed() const { return options_.pipelining; }
  // "none" (plaintext), "encrypted" or "verified".
  const char* tls_state() const { return tls_state_; }
  // The host this connection went to, for logs: name[address]:port.
  const std::string& peer() const { return peer_; }

  int transactions = 0;
  std::chrono::steady_clock::time_point idle_since;

  // A reply that ends the attempt for the whole message.
  static absl::Status Refusal(const std::string& step, const Reply& r);

 private:
  Awaitable<absl::Status> Connect(const std::vector<RelayTarget>& targets);
  Awaitable<absl::Status> Ehlo();
  Awaitable<absl::Status> StartTls();
  // Runs `op` (given the completion token) with a deadline: the error it
  // ended with, timed_out when the deadline passed (the socket is closed).
  template <typename Op>
  Awaitable<boost::system::error_code> Timed(std::chrono::milliseconds timeout,
                                             Op op);
  // UNAVAILABLE for a step that failed (and closes the connection); OK for
  // no error.
  absl::Status Check(const boost::system::error_code& ec, const char* what);
  std::string What() const;

  const SmtpRelayOptions& options_;
  boost::asio::ssl::context* const tls_context_;
  boost::asio::ip::tcp::socket socket_;
  std::optional<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
  const char* tls_state_ = "none";
  std::string target_name_;
  std::string peer_;
  std::string buffer_;
  std::vector<std::string> keywords_;
};

}  // namespace sinkline::broker::relay
