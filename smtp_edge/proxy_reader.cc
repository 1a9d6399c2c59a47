#include "smtp_edge/proxy_reader.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <memory>

#include "absl/strings/str_cat.h"
#include "smtp_edge/reply.h"

namespace sinkline::edge {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// An address as the edge writes it: IPv4-mapped IPv6 as IPv4.
std::string NormalizeIp(const std::string& ip) {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(ip, ec);
  if (ec) return ip;
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
    addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  }
  return addr.to_string();
}

// Shared by the read and its timer's handler, which may run after the read
// ended (the timer fired just before it was cancelled): the handler looks
// here before it touches the socket.
struct ReadState {
  bool read = false;
  bool timed_out = false;
};

}  // namespace

asio::awaitable<ProxyRead> ReadProxyHeader(
    tcp::socket& socket, std::vector<char>& buf, ProxyVersions versions,
    std::chrono::steady_clock::duration timeout) {
  auto state = std::make_shared<ReadState>();
  asio::steady_timer timer(socket.get_executor());
  timer.expires_after(timeout);
  timer.async_wait([state, &socket](boost::system::error_code e) {
    if (e || state->read) return;
    state->timed_out = true;
    boost::system::error_code ignored;
    socket.close(ignored);
  });
  std::string in;
  ProxyParse p;
  while (p.state == ProxyParse::State::kNeedMore) {
    boost::system::error_code ec;
    size_t n = co_await socket.async_read_some(
        asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      p.error = state->timed_out ? "no PROXY header in time"
                                 : "closed before the PROXY header";
      break;
    }
    in.append(buf.data(), n);
    p = ParseProxyHeader(in, versions);
  }
  state->read = true;
  timer.cancel();
  ProxyRead r;
  r.ok = p.state == ProxyParse::State::kDone;
  if (!r.ok) {
    r.error = p.error;
    co_return r;
  }
  r.header = p.header;
  r.early = in.substr(p.consumed);
  co_return r;
}

asio::awaitable<void> RefuseProxy(tcp::socket& socket,
                                  const std::string& hostname) {
  boost::system::error_code ec;
  if (socket.is_open()) {
    const std::string reply =
        MakeReply(421, "4.7.0",
                  absl::StrCat(hostname, " Error: bad PROXY header"))
            .Format();
    co_await asio::async_write(socket, asio::buffer(reply),
                               asio::redirect_error(asio::use_awaitable, ec));
  }
  socket.shutdown(tcp::socket::shutdown_both, ec);
  socket.close(ec);
}

void ApplyProxyAddresses(const ProxyHeader& header, v1::SessionInfo& info) {
  if (!header.has_addresses) return;
  info.mutable_client()->set_ip(NormalizeIp(header.source_ip));
  info.mutable_client()->set_port(header.source_port);
  info.mutable_server()->set_ip(NormalizeIp(header.dest_ip));
  info.mutable_server()->set_port(header.dest_port);
}

}  // namespace sinkline::edge
