// The Asio side of the edge: the server accepts and tracks connections; each
// connection only moves bytes between its socket, its Session and its
// broker stream.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
};

class Connection;

class Server {
 public:
  Server(boost::asio::io_context& io, EdgeOptions options,
         std::shared_ptr<grpc::Channel> broker_channel);
  ~Server();

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

 private:
  boost::asio::io_context& io_;
  const EdgeOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  boost::asio::ip::tcp::acceptor acceptor_;
  mutable absl::Mutex mu_;
  std::map<Connection*, std::weak_ptr<Connection>> connections_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkline::edge
