#include "tools/sinkline/client.h"

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace sinkline::cli {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat(what, " ", path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// grpc's names: NOT_FOUND, FAILED_PRECONDITION, ...
const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "CANCELLED";
    case grpc::UNKNOWN:
      return "UNKNOWN";
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::ABORTED:
      return "ABORTED";
    case grpc::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::INTERNAL:
      return "INTERNAL";
    case grpc::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace

absl::StatusOr<Client> Client::Make(const Connection& connection) {
  Client c;
  c.connection_ = connection;
  if (!connection.tls_cert.empty()) {
    auto cert = ReadFile(connection.tls_cert, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadFile(connection.tls_key, "TLS key");
    if (!key.ok()) return key.status();
    c.cert_pem_ = *cert;
    c.key_pem_ = *key;
  }
  if (!connection.tls_ca.empty()) {
    auto ca = ReadFile(connection.tls_ca, "TLS CA bundle");
    if (!ca.ok()) return ca.status();
    c.ca_pem_ = *ca;
  }
  if (!connection.token_file.empty()) {
    auto token = ReadFile(connection.token_file, "admin token file");
    if (!token.ok()) return token.status();
    c.token_ = std::string(absl::StripAsciiWhitespace(*token));
  }
  return c;
}

std::shared_ptr<grpc::Channel> Client::Channel(
    const std::string& target) const {
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!cert_pem_.empty() || !ca_pem_.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_pem_;
    ssl.pem_private_key = key_pem_;
    ssl.pem_cert_chain = cert_pem_;
    creds = grpc::SslCredentials(ssl);
    if (!connection_.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(connection_.tls_server_name);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(target, creds, args);
}

std::unique_ptr<v1::Admin::Stub> Client::Admin() const {
  return v1::Admin::NewStub(Channel(connection_.broker));
}

std::unique_ptr<v1::EdgeAdmin::Stub> Client::EdgeAdmin(
    const std::string& target) const {
  return v1::EdgeAdmin::NewStub(Channel(target));
}

std::unique_ptr<grpc::ClientContext> Client::Context(bool operator_call) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(connection_.timeout_ms));
  // Sent as metadata (not call credentials): the default control plane is
  // plaintext on loopback, where gRPC would drop call credentials.
  if (operator_call && !token_.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + token_);
  }
  return ctx;
}

int ExitCodeFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK:
      return kOk;
    case grpc::NOT_FOUND:
      return kNotFound;
    case grpc::UNAVAILABLE:
    case grpc::DEADLINE_EXCEEDED:
    case grpc::CANCELLED:
      return kUnreachable;
    default:
      return kRefused;
  }
}

int Report(const std::string& what, const grpc::Status& status) {
  std::cerr << "sinkline: " << what << ": " << CodeName(status.error_code())
            << ": " << status.error_message() << "\n";
  return ExitCodeFor(status.error_code());
}

int ReportLocal(const std::string& what, const absl::Status& status) {
  std::cerr << "sinkline: " << what << ": " << status.message() << "\n";
  return ExitCodeFor(static_cast<grpc::StatusCode>(status.code()));
}

}  // namespace sinkline::cli
