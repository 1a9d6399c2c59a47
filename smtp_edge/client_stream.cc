#include "smtp_edge/client_stream.h"

#include <openssl/ssl.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/write.hpp>

namespace sinkline::edge {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

asio::awaitable<size_t> ClientStream::ReadSome(asio::mutable_buffer b,
                                               boost::system::error_code& ec) {
  if (tls_) {
    co_return co_await tls_->async_read_some(
        b, asio::redirect_error(asio::use_awaitable, ec));
  }
  co_return co_await socket_.async_read_some(
      b, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> ClientStream::WriteAll(asio::const_buffer b,
                                             boost::system::error_code& ec) {
  if (tls_) {
    co_await asio::async_write(*tls_, b,
                               asio::redirect_error(asio::use_awaitable, ec));
  } else {
    co_await asio::async_write(socket_, b,
                               asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<absl::StatusOr<v1::TlsState>> ClientStream::Handshake(
    std::shared_ptr<asio::ssl::context> context) {
  context_ = std::move(context);
  tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, *context_);
  boost::system::error_code ec;
  co_await tls_->async_handshake(asio::ssl::stream_base::server,
                                 asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return absl::UnavailableError(ec.message());
  SSL* ssl = tls_->native_handle();
  v1::TlsState state;
  state.set_active(true);
  state.set_version(SSL_get_version(ssl));
  state.set_cipher(SSL_get_cipher_name(ssl));
  co_return state;
}

}  // namespace sinkline::edge
