// The PROXY protocol header read from the socket of a proxied connection,
// before any SMTP: within a time limit, then the addresses it names put into
// the session's info. A connection whose header is missing, broken or late
// is refused with 421 4.7.0 and closed. The bytes are parsed by
// proxy_protocol.h; this file owns the socket side.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "sinkline/v1/types.pb.h"
#include "smtp_edge/proxy_protocol.h"

namespace sinkline::edge {

struct ProxyRead {
  // False: no header, a broken one, or none in time; `error` says which.
  bool ok = false;
  std::string error;
  ProxyHeader header;
  // What the client sent after the header: the start of its SMTP.
  std::string early;
};

// Reads from `socket` (through `buf`) until a whole header in `versions`,
// an error, or `timeout`, at which the socket is closed.
boost::asio::awaitable<ProxyRead> ReadProxyHeader(
    boost::asio::ip::tcp::socket& socket, std::vector<char>& buf,
    ProxyVersions versions, std::chrono::steady_clock::duration timeout);

// A bad header's end: 421 4.7.0 "<hostname> Error: bad PROXY header" when
// the socket is still open, then shutdown and close.
boost::asio::awaitable<void> RefuseProxy(boost::asio::ip::tcp::socket& socket,
                                         const std::string& hostname);

// The client and server addresses of `header`, when it has them, into
// `info` (IPv4-mapped IPv6 written as IPv4); otherwise `info` keeps the
// connection's own.
void ApplyProxyAddresses(const ProxyHeader& header, v1::SessionInfo& info);

}  // namespace sinkline::edge
