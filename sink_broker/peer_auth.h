// Peer identity on the broker's ports, by role. SessionService is for edges
// only: a call is admitted by a verified client-certificate name
// (--edge-client-names, with control-plane mTLS) or by the edges' token
// (--edge-token-file; the edge sends `authorization: Bearer <token>` from its
// --broker-token-file), and by loopback only with --session-allow-loopback
// (a development stack on one machine). Whatever the trust, a call that
// carries another role's credential is refused: a sink's lease claim or a
// bearer token that is not the edges' on SessionService, the edges' token
// or certificate on Admin.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sink_broker/peer_limits.h"

namespace sinkline::broker {

// What a call brings to say who it is.
struct PeerCredentials {
  // The peer as gRPC spells it ("ipv4:10.0.0.7:4242").
  std::string peer;
  std::optional<std::string> authorization;
  // CN and DNS names of a verified client certificate.
  std::vector<std::string> cert_names;
  // The call names a message or binding (sinkline-queue-id,
  // sinkline-binding): a sink speaking with a lease token.
  bool lease_claim = false;

  static PeerCredentials From(const grpc::ServerContextBase& ctx);
  // The peer's address without its port ("ipv4:10.0.0.7"): connections
  // from one host count together.
  std::string host() const;
  bool on_loopback() const;
};

// Who may open session streams.
class EdgeGuard {
 public:
  // token_file: --edge-token-file (empty: no token); client_names:
  // --edge-client-names (needs client certificates, `have_client_ca`).
  static absl::StatusOr<EdgeGuard> Make(const std::string& token_file,
                                        std::vector<std::string> client_names,
                                        bool allow_loopback,
                                        bool have_client_ca);
  EdgeGuard() = default;
  EdgeGuard(std::string token, std::vector<std::string> client_names,
            bool allow_loopback)
      : token_(std::move(token)),
        client_names_(std::move(client_names)),
        allow_loopback_(allow_loopback) {}

  // OK for an edge; UNAUTHENTICATED without a credential, PERMISSION_DENIED
  // with a wrong one or another role's. Decided before any event is read.
  grpc::Status Check(const PeerCredentials& c) const;
  // The call presents what only edges hold (Admin refuses it).
  bool PresentsEdgeCredential(const PeerCredentials& c) const;
  // Who the per-edge stream limit counts: the certificate name that let the
  // call in, else the peer's host.
  std::string Identity(const PeerCredentials& c) const;

  bool configured() const { return !token_.empty() || !client_names_.empty(); }
  bool allow_loopback() const { return allow_loopback_; }
  const std::string& token() const { return token_; }

 private:
  bool TokenMatches(const PeerCredentials& c) const;
  const std::string* NameMatch(const PeerCredentials& c) const;

  std::string token_;
  std::vector<std::string> client_names_;
  bool allow_loopback_ = false;
};

// The door of SessionService: the edge's credential, then the per-edge
// stream limit (--session-streams-per-edge).
class SessionGate {
 public:
  SessionGate(EdgeGuard guard, uint64_t streams_per_edge)
      : guard_(std::move(guard)),
        streams_("session_streams", streams_per_edge) {}

  // What the admitted stream holds until it ends (its place in the limit),
  // or why it is refused (UNAUTHENTICATED, PERMISSION_DENIED,
  // RESOURCE_EXHAUSTED, each with a message).
  absl::StatusOr<std::shared_ptr<void>> Admit(
      const grpc::ServerContextBase& ctx);
  const EdgeGuard& guard() const { return guard_; }

 private:
  const EdgeGuard guard_;
  PeerBudget streams_;
};

// Counts a refusal by a guard in sinkline_broker_peer_refused_total.
void CountPeerRefused(const std::string& service, grpc::StatusCode code);

}  // namespace sinkline::broker
