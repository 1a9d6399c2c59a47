// Security of the control plane: TLS with client certificates on every gRPC
// server and channel between Sinkline processes, and the credential that
// operator services (the broker's Admin, the edge's EdgeAdmin) require.
//
// Flags, the same in every binary:
//   --grpc-tls-cert, --grpc-tls-key  this process's certificate and key (PEM),
//                                    served by its gRPC server and presented as
//                                    the client certificate on its calls;
//   --grpc-tls-ca                    the CA bundle peers must chain to; the
//                                    server then requires client certificates;
//   --grpc-tls-server-name           the name expected in servers'
//                                    certificates when it is not the target's
//                                    host (e.g. when dialing an IP address);
//   --admin-token-file               a file holding the bearer token for
//                                    operator calls;
//   --admin-client-names             client certificate names (CN or DNS SAN)
//                                    allowed to make operator calls;
//   --admin-allow-loopback           with neither of the two, callers on
//                                    loopback may make operator calls (off by
//                                    default).
// With none of the TLS flags, gRPC runs in plaintext (development on one
// machine). Lease tokens and the admin token are never logged.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sinkline {

struct GrpcTlsConfig {
  std::string cert_pem;
  std::string key_pem;
  std::string ca_pem;  // empty: peers are not verified by a private CA
  std::string server_name;
  bool enabled() const { return !cert_pem.empty(); }
};

// Reads the TLS flags and files once; an incomplete set of flags or a file
// that cannot be read is an error (call it early in main and stop on error).
absl::Status LoadGrpcTls();
// The configuration loaded (disabled before LoadGrpcTls or without flags).
const GrpcTlsConfig& GrpcTls();
// For tests: use this configuration instead of the flags.
void SetGrpcTlsForTesting(GrpcTlsConfig config);

// Credentials for this process's gRPC servers: TLS (requiring a client
// certificate that chains to the CA, when one is given) or plaintext.
std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials();
// Credentials for channels to other Sinkline processes, and the channel
// arguments they need (the expected server name).
std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials();
void AddGrpcTlsChannelArgs(grpc::ChannelArguments& args);

// Who may call an operator service.
class AdminGuard {
 public:
  // From --admin-token-file, --admin-client-names, --admin-allow-loopback.
  static absl::StatusOr<AdminGuard> FromFlags();
  AdminGuard() = default;
  AdminGuard(std::string token, std::vector<std::string> client_names,
             bool allow_loopback = false)
      : token_(std::move(token)),
        client_names_(std::move(client_names)),
        allow_loopback_(allow_loopback) {}

  // OK when the call carries `authorization: Bearer <token>` with the
  // configured token, or comes with a verified client certificate whose CN
  // or DNS name is allowed. With neither configured, only callers on
  // loopback are let in, and only when allow_loopback; otherwise nobody.
  // UNAUTHENTICATED without a credential,
  // PERMISSION_DENIED with a wrong one.
  grpc::Status Check(const grpc::ServerContextBase& ctx) const;
  bool configured() const { return !token_.empty() || !client_names_.empty(); }
  bool allow_loopback() const { return allow_loopback_; }

  // The decision itself, from what the call brings: the peer address as
  // gRPC spells it ("ipv4:10.0.0.7:4242"), the authorization header if any,
  // and the names of a verified client certificate.
  grpc::Status Decide(const std::string& peer, const std::string* authorization,
                      const std::vector<std::string>& peer_names) const;

 private:
  std::string token_;
  std::vector<std::string> client_names_;
  bool allow_loopback_ = false;
};

}  // namespace sinkline
