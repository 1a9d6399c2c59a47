// The client's byte stream: the connection's socket, plain until STARTTLS,
// then TLS over it once the server side of the handshake completed. The
// connection reads and writes through it and never asks which it is.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>

#include "absl/status/statusor.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::edge {

class ClientStream {
 public:
  explicit ClientStream(boost::asio::ip::tcp::socket& socket)
      : socket_(socket) {}

  boost::asio::awaitable<size_t> ReadSome(boost::asio::mutable_buffer b,
                                          boost::system::error_code& ec);
  boost::asio::awaitable<void> WriteAll(boost::asio::const_buffer b,
                                        boost::system::error_code& ec);

  // The server side of the TLS handshake with `context`, which the session
  // keeps (a reload does not touch it): the TLS state, or why it failed.
  // Whatever the client sends now goes to the handshake.
  boost::asio::awaitable<absl::StatusOr<v1::TlsState>> Handshake(
      std::shared_ptr<boost::asio::ssl::context> context);

 private:
  boost::asio::ip::tcp::socket& socket_;
  std::shared_ptr<boost::asio::ssl::context> context_;
  std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
};

}  // namespace sinkline::edge
