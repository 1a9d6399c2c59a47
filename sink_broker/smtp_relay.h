// A queue backend that relays each released message to a next-hop MTA over
// SMTP (RFC 5321): EHLO, MAIL FROM with SIZE and BODY when the next hop
// offers them, one RCPT per recipient, DATA with dot-stuffing. A 4xx or an
// unreachable next hop defers (the broker retries with backoff); a 5xx
// refuses for good, per recipient where the next hop answered per
// recipient.
//
// Connections are cached: after a transaction the connection waits idle for
// the next message (RSET first), for a bounded time and a bounded number of
// transactions, as Postfix's smtp_connection_cache_* do. MAIL, RCPT and
// DATA go in one write when the next hop offers PIPELINING (RFC 2920).
// Deliveries are asynchronous: coroutines on one I/O thread, so no thread
// waits on the network; at most the slow-start window of messages is in
// flight (concurrency_window.h: from `initial_destination_concurrency` up
// to `destination_concurrency`), the others wait in order.
//
// The next hop is found as Postfix's relayhost is (relay_dns.h: MX or
// [host]:port, with a DNS deadline) and reached over STARTTLS as --relay-tls
// says (relay_connection.h). MAIL and RCPT parameters (SIZE, BODY,
// SMTPUTF8, DSN's RET, ENVID, NOTIFY, ORCPT) go on only when the next hop
// offers their extension; a message that needs one it lacks is refused for
// good (never silently downgraded).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sink_broker/queue_backend.h"
#include "sink_broker/relay_dns.h"

namespace boost::asio::ssl {
class context;
}

namespace sinkline::broker {

// STARTTLS towards the next hop (Postfix's smtp_tls_security_level):
// none: never; may: when offered, plaintext only when not offered (a
// failed handshake defers, it never goes on in plaintext); encrypt:
// required, certificate not checked; verify: required, the certificate
// chain checked against the CA file (or the system's) and its name against
// the server name.
enum class RelayTls { kNone, kMay, kEncrypt, kVerify };
absl::StatusOr<RelayTls> ParseRelayTls(absl::string_view name);
const char* RelayTlsName(RelayTls tls);

struct SmtpRelayOptions {
  // The next hop, in relayhost syntax (relay_dns.h): [host]:port, host:port
  // (MX lookup), dns:host[:port].
  std::string next_hop;
  // Name sent in EHLO.
  std::string helo_name = "localhost";
  std::chrono::milliseconds connect_timeout{30000};
  // Bound on each command's reply (RFC 5321 §4.5.3.2 suggests minutes; a
  // next hop on the same network answers far sooner).
  std::chrono::milliseconds command_timeout{300000};
  // How long an idle connection waits for the next message (Postfix's
  // smtp_connection_cache_time_limit); 0 turns the cache off.
  std::chrono::milliseconds cache_idle{2000};
  // Transactions on one connection before it is closed (Postfix's
  // smtp_connection_reuse_count_limit); 0: no limit.
  int reuse_limit = 100;
  // Messages in flight to the next hop at once (Postfix's
  // default_destination_concurrency_limit), reached by slow start from
  // `initial_destination_concurrency` (Postfix's
  // initial_destination_concurrency): concurrency_window.h.
  int destination_concurrency = 20;
  int initial_destination_concurrency = 5;
  // Send MAIL, RCPT and DATA in one write when the next hop offers
  // PIPELINING.
  bool pipelining = true;
  RelayTls tls = RelayTls::kMay;
  // Trust anchors for kVerify (PEM); empty: the system's.
  std::string tls_ca_file;
  // Name the certificate must carry (and SNI); empty: the host connected
  // to (the MX name, or the host in [host]).
  std::string tls_server_name;
  DnsOptions dns;
};

class SmtpRelayBackend : public QueueBackend {
 public:
  // Checks the options first (next-hop syntax, CA file).
  static absl::StatusOr<std::unique_ptr<SmtpRelayBackend>> Create(
      SmtpRelayOptions options);
  // Options that do not hold make every Submit defer with the reason.
  explicit SmtpRelayBackend(SmtpRelayOptions options);
  ~SmtpRelayBackend() override;
  // Never blocks on the network: `done` runs on the relay's I/O thread
  // (or at once, for an envelope or content that cannot go).
  void SubmitAsync(const v1::QueueEntry& entry, const std::string& content_path,
                   SubmitDone done) override;
  // Waits for SubmitAsync (tests, tools); never on the relay's I/O thread.
  absl::StatusOr<SubmitOutcome> Submit(
      const v1::QueueEntry& entry, const std::string& content_path) override;
  std::string Describe() const override {
    return "smtp-relay " + options_.next_hop;
  }

 private:
  class Engine;
  struct Delivery;
  const SmtpRelayOptions options_;
  absl::StatusOr<NextHopSpec> hop_;
  absl::Status init_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
  // Last: goes first (it uses the members above).
  std::unique_ptr<Engine> engine_;
};

// What dot-stuffing carries from one chunk to the next.
struct DotStuffState {
  bool at_line_start = true;
  bool after_cr = false;
};

// Dot-stuffs `data` for DATA (RFC 5321 §4.5.2): a '.' that starts a line
// gets another, and a bare LF becomes CRLF (a next hop must never see a
// bare LF: it would end the message early on some servers).
std::string DotStuff(absl::string_view data, DotStuffState& state);

}  // namespace sinkline::broker
