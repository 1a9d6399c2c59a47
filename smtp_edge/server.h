// The Asio side of the edge: the server accepts and tracks connections; each
// connection only moves bytes between its socket, its Session and its
// broker stream.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "policy.h"
#include "session.h"
#include "sinkline/v1/session.grpc.pb.h"

namespace sinkline::edge {

struct EdgeOptions {
  std::string hostname = "localhost";
  std::string edge_id = "edge-1";
  SessionLimits limits;
  std::chrono::milliseconds broker_connect_timeout{5000};
  std::chrono::milliseconds broker_timeout{120000};
  std::chrono::seconds idle_timeout{300};
  // PEM certificate chain and key for STARTTLS; no STARTTLS when empty.
  std::string tls_cert;
  std::string tls_key;
  // Credentials file for AUTH (user:crypt-hash lines); no AUTH when empty.
  std::string auth_file;
  // Recipient domains taken for local delivery; others are relaying.
  std::vector<std::string> accepted_domains;
  // CIDR blocks whose clients may relay without AUTH.
  std::vector<std::string> trusted_networks;
};

class Connection;

class Server {
 public:
  Server(boost::asio::io_context& io, EdgeOptions options,
         std::shared_ptr<grpc::Channel> broker_channel);
  ~Server();

  // Loads the TLS certificate, the credentials and the networks named in
  // the options; fails when one of them is unusable.
  absl::Status LoadPolicy();
  // Binds "host:port" (IPv4 or [IPv6]; port 0 picks one) and starts
  // accepting.
  absl::StatusOr<int> Listen(const std::string& address);
  // Stops accepting and closes every connection (421 to idle clients).
  void Stop();

  // Internal.
  const EdgeOptions& options() const { return options_; }
  v1::SessionService::Stub* stub() { return stub_.get(); }
  void Track(const std::shared_ptr<Connection>& c);
  void Untrack(Connection* c);
  size_t sessions() const;
  // The policy for a client at `client_ip`.
  SessionPolicy PolicyFor(const std::string& client_ip) const;
  boost::asio::ssl::context* tls_context() { return tls_.get(); }

 private:
  boost::asio::io_context& io_;
  const EdgeOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
  std::optional<Credentials> credentials_;
  std::vector<std::string> accepted_domains_;
  std::vector<Cidr> trusted_;
  mutable absl::Mutex mu_;
  std::map<Connection*, std::weak_ptr<Connection>> connections_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkline::edge
