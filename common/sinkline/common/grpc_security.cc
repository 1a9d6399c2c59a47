#include "sinkline/common/grpc_security.h"

#include <openssl/crypto.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

ABSL_FLAG(std::string, grpc_tls_cert, "",
          "PEM certificate for this process's gRPC server and, as client "
          "certificate, for its gRPC calls (TLS on with --grpc-tls-key)");
ABSL_FLAG(std::string, grpc_tls_key, "", "PEM private key of --grpc-tls-cert");
ABSL_FLAG(std::string, grpc_tls_ca, "",
          "PEM CA bundle that gRPC peers must chain to; servers then require "
          "client certificates");
ABSL_FLAG(std::string, grpc_tls_server_name, "",
          "name expected in servers' certificates instead of the target's "
          "host");
ABSL_FLAG(std::string, admin_token_file, "",
          "file holding the bearer token that operator (admin) calls must "
          "present as 'authorization: Bearer <token>'");
ABSL_FLAG(std::vector<std::string>, admin_client_names, {},
          "client certificate names (CN or DNS SAN) allowed to make operator "
          "calls without a token (needs --grpc-tls-ca)");
ABSL_FLAG(bool, admin_allow_loopback, false,
          "with neither --admin-token-file nor --admin-client-names, let "
          "callers on loopback make operator calls (a development stack on "
          "one machine; never behind a sidecar proxy, which connects from "
          "loopback)");

namespace sinkline {
namespace {

absl::Mutex tls_mu;
GrpcTlsConfig& TlsStorage() {
  static GrpcTlsConfig* config = new GrpcTlsConfig;
  return *config;
}

absl::StatusOr<std::string> ReadFile(const std::string& what,
                                     const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", what, " ", path));
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (out.str().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, " is empty"));
  }
  return out.str();
}

}  // namespace

absl::Status LoadGrpcTls() {
  const std::string cert = absl::GetFlag(FLAGS_grpc_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_grpc_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_grpc_tls_ca);
  GrpcTlsConfig config;
  config.server_name = absl::GetFlag(FLAGS_grpc_tls_server_name);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(
        "--grpc-tls-cert and --grpc-tls-key go together");
  }
  if (cert.empty() && !ca.empty()) {
    return absl::InvalidArgumentError(
        "--grpc-tls-ca needs --grpc-tls-cert and --grpc-tls-key");
  }
  if (!cert.empty()) {
    auto c = ReadFile("--grpc-tls-cert", cert);
    if (!c.ok()) return c.status();
    auto k = ReadFile("--grpc-tls-key", key);
    if (!k.ok()) return k.status();
    config.cert_pem = std::move(*c);
    config.key_pem = std::move(*k);
    if (!ca.empty()) {
      auto a = ReadFile("--grpc-tls-ca", ca);
      if (!a.ok()) return a.status();
      config.ca_pem = std::move(*a);
    }
  }
  SetGrpcTlsForTesting(std::move(config));
  return absl::OkStatus();
}

const GrpcTlsConfig& GrpcTls() {
  absl::MutexLock lock(&tls_mu);
  return TlsStorage();
}

void SetGrpcTlsForTesting(GrpcTlsConfig config) {
  absl::MutexLock lock(&tls_mu);
  TlsStorage() = std::move(config);
}

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials() {
  const GrpcTlsConfig& tls = GrpcTls();
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      tls.ca_pem.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca_pem;
  options.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials() {
  const GrpcTlsConfig& tls = GrpcTls();
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_pem;  // empty: the system's roots
  options.pem_private_key = tls.key_pem;
  options.pem_cert_chain = tls.cert_pem;
  return grpc::SslCredentials(options);
}

void AddGrpcTlsChannelArgs(grpc::ChannelArguments& args) {
  const GrpcTlsConfig& tls = GrpcTls();
  if (tls.enabled() && !tls.server_name.empty()) {
    args.SetSslTargetNameOverride(tls.server_name);
  }
}

absl::StatusOr<AdminGuard> AdminGuard::FromFlags() {
  std::string token;
  if (const auto path = absl::GetFlag(FLAGS_admin_token_file); !path.empty()) {
    auto t = ReadFile("--admin-token-file", path);
    if (!t.ok()) return t.status();
    token = std::string(absl::StripAsciiWhitespace(*t));
    if (token.size() < 16) {
      return absl::InvalidArgumentError(
          "--admin-token-file: the token must be at least 16 characters");
    }
  }
  auto names = absl::GetFlag(FLAGS_admin_client_names);
  if (!names.empty() && GrpcTls().ca_pem.empty()) {
    return absl::InvalidArgumentError(
        "--admin-client-names needs --grpc-tls-ca (client certificates)");
  }
  return AdminGuard(std::move(token), std::move(names),
                    absl::GetFlag(FLAGS_admin_allow_loopback));
}

grpc::Status AdminGuard::Check(const grpc::ServerContextBase& ctx) const {
  std::vector<std::string> names;
  auto auth = ctx.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    for (const char* property :
         {"x509_common_name", "x509_subject_alternative_name"}) {
      for (const auto& value : auth->FindPropertyValues(property)) {
        names.emplace_back(value.data(), value.size());
      }
    }
  }
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  std::string authorization;
  if (it != md.end())
    authorization.assign(it->second.data(), it->second.size());
  return Decide(ctx.peer(), it == md.end() ? nullptr : &authorization, names);
}

grpc::Status AdminGuard::Decide(
    const std::string& peer, const std::string* authorization,
    const std::vector<std::string>& peer_names) const {
  if (!configured()) {
    if (allow_loopback_ && (absl::StartsWith(peer, "ipv4:127.") ||
                            absl::StartsWith(peer, "ipv6:[::1]") ||
                            absl::StartsWith(peer, "ipv6:%5B::1%5D") ||
                            absl::StartsWith(peer, "unix:"))) {
      return grpc::Status::OK;
    }
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        allow_loopback_
                            ? "operator calls from other hosts need a "
                              "credential: start with --admin-token-file or "
                              "--admin-client-names"
                            : "operator calls need a credential: start with "
                              "--admin-token-file or --admin-client-names "
                              "(or, on a development machine, "
                              "--admin-allow-loopback)");
  }
  for (const auto& name : peer_names) {
    for (const auto& allowed : client_names_) {
      if (name == allowed) return grpc::Status::OK;
    }
  }
  if (authorization == nullptr) {
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        std::string("operator calls need 'authorization: Bearer <token>'") +
            (client_names_.empty() ? "" : " or an allowed client certificate"));
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (token_.empty() || !absl::StartsWith(*authorization, kBearer)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "credential refused");
  }
  const absl::string_view presented =
      absl::string_view(*authorization).substr(kBearer.size());
  if (presented.size() != token_.size() ||
      CRYPTO_memcmp(presented.data(), token_.data(), token_.size()) != 0) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "credential refused");
  }
  return grpc::Status::OK;
}

}  // namespace sinkline
