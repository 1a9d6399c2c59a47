// Where the relay connects: the next-hop syntax (Postfix's relayhost forms)
// and name resolution with a deadline (c-ares, driven by poll on the
// caller's thread, so no lookup ever outlives its deadline).
//
//   [host]:port, [host]   the host itself, no MX lookup (IPv6: [v6]:port)
//   host:port, host       MX records of host, by preference, each MX's
//                         A/AAAA; host's own A/AAAA when it has no MX
//   dns:host[:port]       the same as host[:port], said explicitly
//
// An IP literal is never looked up; "localhost" and names under
// ".localhost" (RFC 6761) skip the MX lookup. The port is 25 when omitted.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkline::broker {

struct NextHopSpec {
  std::string host;
  std::string port = "25";
  // Look up MX records first (the host is a mail domain).
  bool mx = true;
};

// INVALID_ARGUMENT for a spec that is none of the forms above.
absl::StatusOr<NextHopSpec> ParseNextHop(absl::string_view spec);

// One host to try: its name (what TLS verifies when no server name is
// configured) and its addresses.
struct RelayTarget {
  std::string name;
  std::vector<boost::asio::ip::tcp::endpoint> endpoints;
};

struct DnsOptions {
  // Bound on one whole resolution (MX and then every address lookup).
  std::chrono::milliseconds timeout{10000};
  // "ip" or "ip:port" name servers instead of /etc/resolv.conf's.
  std::vector<std::string> servers;
};

// The hosts to try, in order. UNAVAILABLE when resolution fails, finds no
// address, or runs past the deadline (the reason says which): a next hop
// that cannot be found is a configuration or DNS problem, so messages wait
// rather than bounce.
absl::StatusOr<std::vector<RelayTarget>> ResolveNextHop(
    const NextHopSpec& hop, const DnsOptions& options);

}  // namespace sinkline::broker
