// Accepting and admission: the listening socket, the limits on open
// sessions (in total and per client address), draining, and the policy
// each new session gets.
#include "smtp_edge/server.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "smtp_edge/connection.h"

namespace sinkline::edge {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Server::Server(asio::io_context& io, EdgeOptions options,
               std::shared_ptr<grpc::Channel> broker_channel)
    : io_(io),
      options_(std::move(options)),
      channel_(std::move(broker_channel)),
      stub_(v1::SessionService::NewStub(channel_)),
      accept_strand_(asio::make_strand(io)),
      acceptor_(accept_strand_),
      tls_(options_.tls_cert.empty()
               ? nullptr
               : std::make_unique<TlsContext>(options_.tls_cert,
                                              options_.tls_key)) {}

Server::~Server() = default;

absl::Status Server::ReloadTls(bool only_if_changed) {
  if (tls_ == nullptr) return absl::OkStatus();
  return tls_->Reload(only_if_changed);
}

absl::Status Server::LoadPolicy() {
  if (options_.tls_cert.empty() != options_.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options_.tls_cert.empty()) {
    if (auto st = ReloadTls(); !st.ok()) return st;
  }
  if (!options_.auth_file.empty()) {
    auto c = Credentials::Load(options_.auth_file);
    if (!c.ok()) return c.status();
    credentials_ = std::move(*c);
  }
  accepted_domains_.clear();
  for (const auto& d : options_.accepted_domains) {
    std::string domain = absl::AsciiStrToLower(absl::StripAsciiWhitespace(d));
    if (!domain.empty()) accepted_domains_.push_back(std::move(domain));
  }
  auto nets = ParseNetworks(options_.trusted_networks);
  if (!nets.ok()) return nets.status();
  trusted_ = std::move(*nets);
  auto proxies = ParseNetworks(options_.proxy_trusted);
  if (!proxies.ok()) return proxies.status();
  proxy_trusted_ = std::move(*proxies);
  if (options_.proxy_protocol && proxy_trusted_.empty()) {
    return absl::InvalidArgumentError(
        "--proxy-protocol needs --proxy-trusted: the proxies' networks");
  }
  return absl::OkStatus();
}

SessionPolicy Server::PolicyFor(const std::string& client_ip) const {
  SessionPolicy p;
  p.starttls = tls_context() != nullptr;
  p.credentials = credentials_ ? &*credentials_ : nullptr;
  p.accepted_domains = accepted_domains_;
  p.trusted_client = InNetworks(trusted_, client_ip);
  p.allow_untrusted_routing = options_.allow_untrusted_routing;
  return p;
}

absl::StatusOr<int> Server::Listen(const std::string& address) {
  const auto colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError("listen address must be host:port, got " +
                                      address);
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') {
    host = host.substr(1, host.size() - 2);
  }
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) return absl::InvalidArgumentError("bad listen address " + address);
  tcp::endpoint ep(ip, static_cast<unsigned short>(port));
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": ", ec.message()));
  }
  asio::co_spawn(
      accept_strand_,
      [this]() -> asio::awaitable<void> {
        for (;;) {
          boost::system::error_code ec;
          tcp::socket socket = co_await acceptor_.async_accept(
              asio::make_strand(io_),
              asio::redirect_error(asio::use_awaitable, ec));
          if (ec == asio::error::operation_aborted || !acceptor_.is_open()) {
            co_return;
          }
          if (ec) continue;
          std::string ip;
          if (auto ep = socket.remote_endpoint(ec); !ec) {
            ip = ToAddress(ep).ip();
          }
          if (options_.proxy_protocol) {
            // Only a trusted proxy may say who the client is; the session
            // is admitted once its header named the client.
            if (!TrustedProxy(ip)) {
              spdlog::warn("refused a connection from {}: not a trusted proxy",
                           ip);
              socket.close(ec);
              continue;
            }
            Connection::Make(this, std::move(socket))->Start();
            continue;
          }
          auto conn = Connection::Make(this, std::move(socket));
          std::string why;
          if (!Track(conn, ip, &why)) {
            spdlog::info("refused a session from {}: {}", ip, why);
            conn->Refuse(why);
            continue;
          }
          conn->Start();
        }
      },
      asio::detached);
  return static_cast<int>(acceptor_.local_endpoint().port());
}

void Server::Drain() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  asio::post(accept_strand_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
  for (auto& c : LiveConnections()) c->BeginDrain();
}

void Server::Stop() {
  asio::post(accept_strand_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
  for (auto& c : LiveConnections()) c->Shutdown();
}

bool Server::Track(const std::shared_ptr<Connection>& c, const std::string& ip,
                   std::string* why) {
  absl::MutexLock lock(&mu_);
  if (options_.max_sessions > 0 &&
      static_cast<int>(connections_.size()) >= options_.max_sessions) {
    *why = "too many sessions";
    return false;
  }
  int& mine = per_client_[ip];
  if (options_.max_sessions_per_client > 0 &&
      mine >= options_.max_sessions_per_client) {
    if (mine == 0) per_client_.erase(ip);
    *why = "too many sessions from your address";
    return false;
  }
  ++mine;
  connections_[c.get()] = Tracked{c, ip};
  return true;
}

void Server::Untrack(Connection* c) {
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(c);
  if (it == connections_.end()) return;
  auto pc = per_client_.find(it->second.ip);
  if (pc != per_client_.end() && --pc->second <= 0) per_client_.erase(pc);
  connections_.erase(it);
}

std::vector<std::shared_ptr<Connection>> Server::LiveConnections() const {
  std::vector<std::shared_ptr<Connection>> live;
  absl::MutexLock lock(&mu_);
  for (const auto& [raw, t] : connections_) {
    if (auto c = t.connection.lock()) live.push_back(std::move(c));
  }
  return live;
}

std::vector<v1::EdgeSessionInfo> Server::ListSessions() const {
  const auto live = LiveConnections();
  std::vector<v1::EdgeSessionInfo> out;
  out.reserve(live.size());
  for (const auto& c : live) out.push_back(c->Snapshot());
  return out;
}

size_t Server::sessions() const {
  absl::MutexLock lock(&mu_);
  return connections_.size();
}

}  // namespace sinkline::edge
