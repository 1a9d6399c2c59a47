// The Asio side of the edge: the server accepts connections, admits them
// within the session limits and tracks them; each connection (connection.h)
// only moves bytes between its socket, its Session and its broker stream.
#pragma once

#include <grpcpp/channel.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/session.grpc.pb.h"
#include "smtp_edge/policy.h"
#include "smtp_edge/proxy_protocol.h"
#include "smtp_edge/session.h"
#include "smtp_edge/tls_context.h"

namespace sinkline::edge {

struct EdgeOptions {
  std::string hostname = "localhost";
  std::string edge_id = "edge-1";
  SessionLimits limits;
  std::chrono::milliseconds broker_connect_timeout{5000};
  std::chrono::milliseconds broker_timeout{120000};
  // A session idle between transactions this long closes its broker
  // stream and opens a new one at its next command (0: never; the stream
  // lives as long as the session).
  std::chrono::milliseconds broker_stream_idle{0};
  std::chrono::seconds idle_timeout{300};
  // A command line must be whole this long after its first octet
  // (RFC 5321 §4.5.3.2: 5 minutes); 0: no limit.
  std::chrono::seconds command_timeout{300};
  // Message content (DATA or BDAT octets) must come at least this fast on
  // average once it has gone on for `data_rate_grace`; 0: no limit.
  uint64_t data_min_rate = 1024;  // octets per second
  std::chrono::seconds data_rate_grace{30};
  // A session is closed (421 4.4.2) this long after it began (0: never).
  std::chrono::seconds max_session{3600};
  // Open sessions in total and from one client address; more get 421 4.7.0
  // (0: no limit).
  int max_sessions = 1000;
  int max_sessions_per_client = 50;
  // The greeting waits this long; input before it gets 554 (early talker).
  std::chrono::milliseconds greeting_delay{0};
  // PEM certificate chain and key for STARTTLS; no STARTTLS when empty.
  std::string tls_cert;
  std::string tls_key;
  // How often the edge looks whether the certificate or key file changed
  // (a rotated Kubernetes Secret, a renewed certificate) and loads them for
  // new sessions (0: only on SIGHUP).
  std::chrono::seconds tls_reload_interval{60};
  // Credentials file for AUTH (user:crypt-hash lines); no AUTH when empty.
  std::string auth_file;
  // Recipient domains taken for local delivery; others are relaying.
  std::vector<std::string> accepted_domains;
  // CIDR blocks whose clients may relay without AUTH.
  std::vector<std::string> trusted_networks;
  // Take recipients with sender-specified routing (%, !, a quoted @) from
  // clients neither trusted nor authenticated (off: 550 5.7.1).
  bool allow_untrusted_routing = false;
  // PROXY protocol (off when unset): a connection from `proxy_trusted`
  // must start with a header, whose source address becomes the client's;
  // any other connection is closed.
  std::optional<ProxyVersions> proxy_protocol;
  std::vector<std::string> proxy_trusted;
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
  // Loads the TLS certificate and key again for new sessions; sessions
  // already in TLS keep theirs. A file that does not load leaves the
  // current certificate in use and returns why. `only_if_changed`: do
  // nothing unless either file changed since the last load.
  absl::Status ReloadTls(bool only_if_changed = false);
  // Binds "host:port" (IPv4 or [IPv6]; port 0 picks one) and starts
  // accepting.
  absl::StatusOr<int> Listen(const std::string& address);
  // Stops accepting; sessions outside a transaction get 421 4.3.2 now,
  // the others when their transaction is over.
  void Drain();
  // Stops accepting and closes every connection.
  void Stop();

  // Internal.
  const EdgeOptions& options() const { return options_; }
  v1::SessionService::Stub* stub() { return stub_.get(); }
  // Admits a new connection from `ip`, or explains in `why` why not.
  bool Track(const std::shared_ptr<Connection>& c, const std::string& ip,
             std::string* why);
  void Untrack(Connection* c);
  size_t sessions() const;
  // What operators see of each open session.
  std::vector<v1::EdgeSessionInfo> ListSessions() const;
  bool draining() const {
    absl::MutexLock lock(&mu_);
    return draining_;
  }
  // The policy for a client at `client_ip`.
  SessionPolicy PolicyFor(const std::string& client_ip) const;
  // The TLS context for a new handshake (null without STARTTLS); the caller
  // keeps it for the session's lifetime.
  std::shared_ptr<boost::asio::ssl::context> tls_context() const {
    return tls_ == nullptr ? nullptr : tls_->current();
  }
  // A peer allowed to send a PROXY header.
  bool TrustedProxy(const std::string& ip) const {
    return InNetworks(proxy_trusted_, ip);
  }

 private:
  boost::asio::io_context& io_;
  const EdgeOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  // The accept loop, Drain's and Stop's closes all run on one strand: two
  // closes of the acceptor on two I/O threads at once race inside Asio.
  boost::asio::strand<boost::asio::io_context::executor_type> accept_strand_;
  boost::asio::ip::tcp::acceptor acceptor_;
  // The STARTTLS certificate; null without --tls-cert.
  const std::unique_ptr<TlsContext> tls_;
  std::optional<Credentials> credentials_;
  std::vector<std::string> accepted_domains_;
  std::vector<Cidr> trusted_;
  std::vector<Cidr> proxy_trusted_;
  mutable absl::Mutex mu_;
  struct Tracked {
    std::weak_ptr<Connection> connection;
    std::string ip;
  };
  std::map<Connection*, Tracked> connections_ ABSL_GUARDED_BY(mu_);
  // The connections still alive, taken under the lock.
  std::vector<std::shared_ptr<Connection>> LiveConnections() const;
  std::map<std::string, int> per_client_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sinkline::edge
