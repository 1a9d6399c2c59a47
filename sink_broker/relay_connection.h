// One SMTP client connection to the next hop, blocking with a deadline on
// each step: every operation runs the connection's private io_context until
// it completes or its time is up (then the socket is closed and the step
// fails). Open() connects to the first target that answers, reads the
// greeting, says EHLO, and upgrades to TLS by STARTTLS (RFC 3207) as
// --relay-tls asks, saying EHLO again over TLS.
#pragma once

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

class Connection {
 public:
  // `tls` may be null when options.tls is kNone.
  Connection(const SmtpRelayOptions& options, boost::asio::ssl::context* tls);

  // Connect (first target that accepts), greeting, EHLO (or HELO),
  // STARTTLS and EHLO again when the TLS policy says so. UNAVAILABLE for
  // anything that should be tried again later, FAILED_PRECONDITION for a
  // 5xx greeting or HELO.
  absl::Status Open(const std::vector<RelayTarget>& targets);

  // Whether the last EHLO listed `keyword`.
  bool Offers(absl::string_view keyword) const;
  // SIZE's value in the last EHLO (0: offered without a limit, or not).
  uint64_t SizeLimit() const;

  absl::StatusOr<Reply> ReadReply();
  absl::Status Write(const std::string& data,
                     std::optional<std::chrono::milliseconds> timeout = {});
  // One command line (refused if it holds CR or LF) and its reply.
  absl::StatusOr<Reply> Command(const std::string& line);
  // Polite close of a connection nobody waits on: QUIT without waiting for
  // the reply.
  void Quit();
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
  absl::Status Connect(const std::vector<RelayTarget>& targets);
  absl::Status Ehlo();
  absl::Status StartTls();
  absl::Status RunUntil(std::optional<boost::system::error_code>& result,
                        std::chrono::milliseconds timeout, const char* what);
  std::string What() const;

  const SmtpRelayOptions& options_;
  boost::asio::ssl::context* const tls_context_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_{io_};
  std::optional<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
  const char* tls_state_ = "none";
  std::string target_name_;
  std::string peer_;
  std::string buffer_;
  std::vector<std::string> keywords_;
};

}  // namespace sinkline::broker::relay
