#include "sink_broker/peer_auth.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "sinkline/common/grpc_status.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace {

constexpr absl::string_view kBearer = "Bearer ";

bool SameSecret(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && !a.empty() &&
         CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

PeerCredentials PeerCredentials::From(const grpc::ServerContextBase& ctx) {
  PeerCredentials c;
  c.peer = ctx.peer();
  auto auth = ctx.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    for (const char* property :
         {"x509_common_name", "x509_subject_alternative_name"}) {
      for (const auto& value : auth->FindPropertyValues(property)) {
        c.cert_names.emplace_back(value.data(), value.size());
      }
    }
  }
  const auto& md = ctx.client_metadata();
  if (auto it = md.find("authorization"); it != md.end()) {
    c.authorization.emplace(it->second.data(), it->second.size());
  }
  c.lease_claim = md.find("sinkline-queue-id") != md.end() ||
                  md.find("sinkline-binding") != md.end();
  return c;
}

std::string PeerCredentials::host() const {
  // "ipv4:1.2.3.4:5", "ipv6:[::1]:5" (or %5B..%5D), "unix:/path".
  if (absl::StartsWith(peer, "unix:")) return "unix";
  const size_t colon = peer.rfind(':');
  const size_t scheme = peer.find(':');
  if (colon == std::string::npos || colon == scheme) return peer;
  return peer.substr(0, colon);
}

bool PeerCredentials::on_loopback() const {
  return absl::StartsWith(peer, "ipv4:127.") ||
         absl::StartsWith(peer, "ipv6:[::1]") ||
         absl::StartsWith(peer, "ipv6:%5B::1%5D") ||
         absl::StartsWith(peer, "unix:");
}

absl::StatusOr<EdgeGuard> EdgeGuard::Make(const std::string& token_file,
                                          std::vector<std::string> client_names,
                                          bool allow_loopback,
                                          bool have_client_ca) {
  std::string token;
  if (!token_file.empty()) {
    std::ifstream in(token_file, std::ios::binary);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read --edge-token-file ", token_file));
    }
    std::ostringstream out;
    out << in.rdbuf();
    token = std::string(absl::StripAsciiWhitespace(out.str()));
    if (token.size() < 16) {
      return absl::InvalidArgumentError(
          "--edge-token-file: the token must be at least 16 characters");
    }
  }
  if (!client_names.empty() && !have_client_ca) {
    return absl::InvalidArgumentError(
        "--edge-client-names needs --grpc-tls-ca (client certificates)");
  }
  return EdgeGuard(std::move(token), std::move(client_names), allow_loopback);
}

bool EdgeGuard::TokenMatches(const PeerCredentials& c) const {
  if (token_.empty() || !c.authorization ||
      !absl::StartsWith(*c.authorization, kBearer)) {
    return false;
  }
  return SameSecret(absl::string_view(*c.authorization).substr(kBearer.size()),
                    token_);
}

const std::string* EdgeGuard::NameMatch(const PeerCredentials& c) const {
  for (const auto& name : c.cert_names) {
    for (const auto& allowed : client_names_) {
      if (name == allowed) return &name;
    }
  }
  return nullptr;
}

bool EdgeGuard::PresentsEdgeCredential(const PeerCredentials& c) const {
  return TokenMatches(c) || NameMatch(c) != nullptr;
}

grpc::Status EdgeGuard::Check(const PeerCredentials& c) const {
  // Another role's credential first: a sink (it speaks with a lease token
  // and names its message) or an operator is not an edge, whatever trust
  // the network gets.
  if (c.lease_claim) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "session streams are for edges; a sink's lease "
                        "claim (sinkline-queue-id, sinkline-binding) is not "
                        "an edge's credential");
  }
  if (PresentsEdgeCredential(c)) return grpc::Status::OK;
  if (c.authorization) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "session streams are for edges: credential refused");
  }
  if (!configured() && allow_loopback_ && c.on_loopback()) {
    return grpc::Status::OK;
  }
  if (!c.cert_names.empty() && !client_names_.empty()) {
    return grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat("session streams are for edges: client certificate ",
                     c.cert_names.front(), " is not in --edge-client-names"));
  }
  return grpc::Status(
      grpc::StatusCode::UNAUTHENTICATED,
      configured()
          ? "session streams are for edges: send 'authorization: Bearer "
            "<token>' (the edge's --broker-token-file) or an allowed client "
            "certificate"
          : "session streams need an edge credential: start the broker "
            "with --edge-token-file or --edge-client-names (or, on a "
            "development machine, --session-allow-loopback)");
}

std::string EdgeGuard::Identity(const PeerCredentials& c) const {
  if (const std::string* name = NameMatch(c)) return "cert:" + *name;
  return c.host();
}

absl::StatusOr<std::shared_ptr<void>> SessionGate::Admit(
    const grpc::ServerContextBase& ctx) {
  const PeerCredentials c = PeerCredentials::From(ctx);
  if (auto st = guard_.Check(c); !st.ok()) {
    CountPeerRefused("session", st.error_code());
    spdlog::warn("session stream from {} refused: {}", c.peer,
                 st.error_message());
    return FromGrpc(st);
  }
  const std::string who = guard_.Identity(c);
  std::shared_ptr<PeerShare> share = TakeOne(streams_, who);
  if (!share) {
    CountPeerRefused("session", grpc::StatusCode::RESOURCE_EXHAUSTED);
    spdlog::warn("session stream from {} refused: {} streams open", c.peer,
                 streams_.limit());
    return absl::ResourceExhaustedError(
        absl::StrCat("this edge has ", streams_.limit(),
                     " session streams open (--session-streams-per-edge)"));
  }
  return std::shared_ptr<void>(std::move(share));
}

void CountPeerRefused(const std::string& service, grpc::StatusCode code) {
  const char* reason =
      code == grpc::StatusCode::UNAUTHENTICATED      ? "no_credential"
      : code == grpc::StatusCode::PERMISSION_DENIED  ? "wrong_credential"
      : code == grpc::StatusCode::RESOURCE_EXHAUSTED ? "limit"
                                                     : "other";
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_peer_refused_total",
                  "Calls refused by the broker's peer checks and per-peer "
                  "limits, by service and reason.",
                  {{"service", service}, {"reason", reason}})
      .Inc();
}

}  // namespace sinkline::broker
