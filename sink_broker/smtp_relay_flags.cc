#include "sink_broker/smtp_relay_flags.h"

#include <unistd.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

ABSL_FLAG(std::string, relay_host, "",
          "submit by SMTP to this next hop instead of a queue directory: "
          "[host]:port (no MX lookup), host:port or host (MX lookup, then "
          "A/AAAA), dns:host[:port]; the port defaults to 25");
ABSL_FLAG(std::string, relay_helo, "",
          "name sent in EHLO to the next hop (default: the host name)");
ABSL_FLAG(int, relay_connect_timeout_ms, 30000,
          "bound on connecting to the next hop");
ABSL_FLAG(int, relay_timeout_ms, 300000,
          "bound on each of the next hop's replies");
ABSL_FLAG(int, relay_cache_idle_ms, 2000,
          "keep an idle connection to the next hop this long for the next "
          "message (0: no connection cache)");
ABSL_FLAG(int, relay_reuse_limit, 100,
          "transactions on one cached connection before it is closed (0: no "
          "limit)");
ABSL_FLAG(int, relay_destination_concurrency, 20,
          "most messages in flight to the next hop at once");
ABSL_FLAG(int, relay_initial_destination_concurrency, 5,
          "slow start: messages in flight to the next hop at first; one more "
          "per completed delivery up to --relay-destination-concurrency, one "
          "fewer per failed connection");
ABSL_FLAG(bool, relay_pipelining, true,
          "pipeline MAIL, RCPT and DATA when the next hop offers PIPELINING");
ABSL_FLAG(std::string, relay_tls, "may",
          "STARTTLS to the next hop: none; may (when offered; a failed "
          "handshake defers, never plaintext on the same connection); "
          "encrypt (required, not verified); verify (required, certificate "
          "chain and name verified)");
ABSL_FLAG(std::string, relay_tls_ca_file, "",
          "PEM trust anchors for --relay-tls=verify (default: the system's)");
ABSL_FLAG(std::string, relay_tls_server_name, "",
          "name the next hop's certificate must carry, also sent as SNI "
          "(default: the host connected to, the MX name or [host])");
ABSL_FLAG(int, relay_dns_timeout_ms, 10000,
          "bound on resolving the next hop (MX and addresses); past it the "
          "message is deferred");
ABSL_FLAG(std::string, relay_dns_server, "",
          "comma-separated name servers (ip or ip:port) for the next hop's "
          "lookups instead of /etc/resolv.conf's");

namespace sinkline::broker {

absl::StatusOr<SmtpRelayOptions> RelayOptionsFromFlags() {
  SmtpRelayOptions relay;
  relay.next_hop = absl::GetFlag(FLAGS_relay_host);
  if (auto hop = ParseNextHop(relay.next_hop); !hop.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--relay-host: ", hop.status().message()));
  }
  relay.helo_name = absl::GetFlag(FLAGS_relay_helo);
  if (relay.helo_name.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    relay.helo_name = host[0] ? host : "localhost";
  }
  relay.connect_timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_relay_connect_timeout_ms));
  relay.command_timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_relay_timeout_ms));
  relay.cache_idle =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_relay_cache_idle_ms));
  relay.reuse_limit = absl::GetFlag(FLAGS_relay_reuse_limit);
  relay.destination_concurrency =
      absl::GetFlag(FLAGS_relay_destination_concurrency);
  relay.initial_destination_concurrency =
      absl::GetFlag(FLAGS_relay_initial_destination_concurrency);
  relay.pipelining = absl::GetFlag(FLAGS_relay_pipelining);
  auto tls = ParseRelayTls(absl::GetFlag(FLAGS_relay_tls));
  if (!tls.ok()) return tls.status();
  relay.tls = *tls;
  relay.tls_ca_file = absl::GetFlag(FLAGS_relay_tls_ca_file);
  relay.tls_server_name = absl::GetFlag(FLAGS_relay_tls_server_name);
  relay.dns.timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_relay_dns_timeout_ms));
  for (absl::string_view s :
       absl::StrSplit(absl::GetFlag(FLAGS_relay_dns_server), ',',
                      absl::SkipWhitespace())) {
    relay.dns.servers.emplace_back(absl::StripAsciiWhitespace(s));
  }
  return relay;
}

}  // namespace sinkline::broker
