// Connections of `sinkline` to the broker's Admin service, an edge's
// EdgeAdmin service and sinks: TLS with a client certificate when asked,
// the operator's bearer token on every call, a deadline on every call, and
// the meaning of each gRPC status as an exit code.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "sinkline/v1/admin.grpc.pb.h"
#include "tools/sinkline/args.h"

namespace sinkline::cli {

class Client {
 public:
  // Reads the TLS files and the token; fails when one cannot be read.
  static absl::StatusOr<Client> Make(const Connection& connection);

  std::shared_ptr<grpc::Channel> Channel(const std::string& target) const;
  std::unique_ptr<v1::Admin::Stub> Admin() const;
  std::unique_ptr<v1::EdgeAdmin::Stub> EdgeAdmin(
      const std::string& target) const;
  // A context with the deadline and, for operator services, the token.
  std::unique_ptr<grpc::ClientContext> Context(bool operator_call = true) const;

  const Connection& connection() const { return connection_; }

 private:
  Connection connection_;
  std::string cert_pem_, key_pem_, ca_pem_, token_;
};

// The exit code that a gRPC status means (0 ok, 1 not found, 3 unreachable,
// 4 refused).
int ExitCodeFor(grpc::StatusCode code);
// Prints "sinkline: <what>: <CODE>: <message>" to stderr and returns the
// exit code of `status`.
int Report(const std::string& what, const grpc::Status& status);
// The same for local failures (files, usage).
int ReportLocal(const std::string& what, const absl::Status& status);

}  // namespace sinkline::cli
