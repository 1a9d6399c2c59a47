// One SMTP connection: it moves bytes between its socket (plain, then TLS
// after STARTTLS), its Session and its broker stream. It waits for the
// broker's binding map and the greeting delay, runs the read loop and the
// STARTTLS handshake, and writes to the client one write at a time. The
// PROXY header is read by proxy_reader.h, the watchdog's clocks
// (watchdog.h) are enforced by watchdog_loop.h. The server accepts it and
// tracks it (server.h).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <string>

#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::edge {

class Server;

class Connection {
 public:
  // A connection for an accepted `socket`, whose executor is a strand: the
  // handlers of one connection never run at once.
  static std::shared_ptr<Connection> Make(Server* server,
                                          boost::asio::ip::tcp::socket socket);
  virtual ~Connection() = default;

  // Serves the session until it ends; the server tracks the connection
  // first, or (behind a PROXY) the connection asks to be tracked once the
  // header named the client.
  virtual void Start() = 0;
  // A session over the limits: 421 4.7.0 with `why` and close, no broker
  // stream.
  virtual void Refuse(std::string why) = 0;
  // The edge drains: the session decides whether to answer 421 now.
  virtual void BeginDrain() = 0;
  // Closes the connection from outside (shutdown).
  virtual void Shutdown() = 0;
  // What operators see of this session (EdgeAdmin.ListSessions); may be
  // called from any thread.
  virtual v1::EdgeSessionInfo Snapshot() const = 0;
};

// An endpoint as the edge writes it: IPv4-mapped IPv6 as IPv4.
v1::Address ToAddress(const boost::asio::ip::tcp::endpoint& ep);

}  // namespace sinkline::edge
