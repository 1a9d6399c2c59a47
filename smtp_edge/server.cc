#include "server.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <deque>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "broker_client.h"
#include "sinkline/common/file_stamp.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::edge {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

std::string RandomId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

v1::Address ToAddress(const tcp::endpoint& ep) {
  v1::Address a;
  auto addr = ep.address();
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
    addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  }
  a.set_ip(addr.to_string());
  a.set_port(ep.port());
  return a;
}

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

Gauge& SessionsGauge() {
  return MetricsRegistry::Default().GetGauge("sinkline_edge_sessions",
                                             "Open SMTP sessions.");
}

Counter& SessionsCounter() {
  return MetricsRegistry::Default().GetCounter("sinkline_edge_sessions_total",
                                               "SMTP sessions accepted.");
}

}  // namespace

// Pause between attempts to reach a broker while a session waits at
// connect.
constexpr auto kRetryDelay = std::chrono::milliseconds(100);

class Connection : public std::enable_shared_from_this<Connection>,
                   public SessionOutput {
 public:
  Connection(Server* server, tcp::socket socket)
      : server_(server),
        strand_(socket.get_executor()),
        socket_(std::move(socket)),
        wake_(strand_),
        idle_(strand_) {}

  asio::any_io_executor& strand() { return strand_; }

  // What operators see of this session (EdgeAdmin.ListSessions); read from
  // other threads.
  v1::EdgeSessionInfo Snapshot() const {
    absl::MutexLock lock(&snap_mu_);
    return snap_;
  }
  void Publish() {
    if (!session_) return;
    absl::MutexLock lock(&snap_mu_);
    *snap_.mutable_session() = session_->info();
    snap_.set_state(session_->closed() ? "CLOSING" : session_->state_name());
  }

  asio::awaitable<void> Run() {
    const auto& opts = server_->options();
    v1::SessionInfo info;
    info.set_session_id(RandomId());
    info.set_edge_id(opts.edge_id);
    info.set_server_hostname(opts.hostname);
    boost::system::error_code ec;
    if (auto ep = socket_.remote_endpoint(ec); !ec) {
      *info.mutable_client() = ToAddress(ep);
    }
    if (auto ep = socket_.local_endpoint(ec); !ec) {
      *info.mutable_server() = ToAddress(ep);
    }
    session_id_ = info.session_id();
    std::string early;  // input after the PROXY header
    if (opts.proxy_protocol) {
      const v1::Address proxy = info.client();
      if (!co_await ReadProxyHeader(info, early)) co_return;
      std::string why;
      if (!server_->Track(shared_from_this(), info.client().ip(), &why)) {
        spdlog::info("refused a session from {} (through proxy {}): {}",
                     info.client().ip(), proxy.ip(), why);
        co_await Refuse(why);
        co_return;
      }
      // Admitted after a drain began: it gets 421 at once.
      if (server_->draining()) draining_ = true;
      spdlog::info("session {} start client={}:{} proxy={}:{}", session_id_,
                   info.client().ip(), info.client().port(), proxy.ip(),
                   proxy.port());
    } else {
      spdlog::info("session {} start client={}:{}", session_id_,
                   info.client().ip(), info.client().port());
    }
    SessionsGauge().Add(1);
    SessionsCounter().Inc();
    session_ = std::make_unique<Session>(
        opts.limits, server_->PolicyFor(info.client().ip()), info, this);
    // Sent before the greeting: the session refuses an early talker.
    if (!early.empty()) session_->Feed(early);
    {
      absl::MutexLock lock(&snap_mu_);
      *snap_.mutable_connected() = NowTimestamp();
    }
    Publish();

    // A broker that is restarting may refuse for a moment: try again until
    // the connect timeout, then give up with 421.
    const auto connect_deadline = Clock::now() + opts.broker_connect_timeout;
    for (;;) {
      stream_done_ = false;
      OpenStream(info);
      while (!got_map_ && !stream_done_) {
        if (!co_await WaitWake(connect_deadline)) break;
      }
      if (got_map_ || !stream_done_ ||
          Clock::now() + kRetryDelay >= connect_deadline) {
        break;
      }
      wake_.expires_after(kRetryDelay);
      co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      woken_ = false;
    }
    if (!got_map_) {
      spdlog::warn("session {}: no broker ({}); 421", session_id_,
                   stream_error_.empty() ? "timeout" : stream_error_);
      CountBrokerUnavailable("connect");
      out_ = MakeReply(421, "4.3.0",
                       absl::StrCat(opts.hostname,
                                    " Service not available, try again later"))
                 .Format();
      co_await Flush();
      Finish();
      co_return;
    }
    // The greeting waits (--greeting-delay-ms); a client that talks before
    // it is refused by the session.
    const auto greet_at = started_at_ + opts.greeting_delay;
    while (Clock::now() < greet_at && socket_.is_open()) {
      co_await WaitWake(greet_at);
    }
    if (socket_.is_open() && socket_.available(ec) > 0 && !ec) {
      size_t n = socket_.read_some(asio::buffer(buf_), ec);
      if (!ec) session_->Feed(absl::string_view(buf_, n));
    }
    if (draining_) session_->SetDraining();
    session_->Start();
    asio::co_spawn(strand_, Watchdog(shared_from_this()), asio::detached);
    char* buf = buf_;
    for (;;) {
      co_await Flush();
      if (session_->closed() || !socket_.is_open()) break;
      if (start_tls_) {
        start_tls_ = false;
        if (!co_await Handshake()) break;
        continue;
      }
      if (session_->waiting() || (stream_ && stream_->queued() > 32)) {
        // The client cannot send while the edge waits: the rate clock stops.
        const auto paused = Clock::now();
        paused_ = true;
        const bool woke = co_await WaitWake(Clock::now() + opts.broker_timeout);
        paused_ = false;
        content_paused_ += Clock::now() - paused;
        if (command_started_) *command_started_ += Clock::now() - paused;
        if (!woke && session_->waiting()) {
          spdlog::warn("session {}: broker did not answer in time",
                       session_id_);
          session_->OnBrokerLost();
        }
        continue;
      }
      last_activity_ = Clock::now();
      reading_ = true;
      size_t n = co_await ReadSome(asio::buffer(buf, sizeof buf_), ec);
      reading_ = false;
      if (ec == asio::error::operation_aborted && session_->closed() &&
          socket_.is_open()) {
        continue;  // draining: the 421 is in out_
      }
      if (ec) break;
      last_activity_ = Clock::now();
      session_->Feed(absl::string_view(buf, n));
      Progress(n);
    }
    Finish();
  }

  // A session over the limits: 421 and close, no broker stream.
  asio::awaitable<void> Refuse(std::string why) {
    finished_ = true;  // never tracked
    boost::system::error_code ec;
    const std::string reply =
        MakeReply(421, "4.7.0",
                  absl::StrCat(server_->options().hostname, " Error: ", why))
            .Format();
    co_await asio::async_write(socket_, asio::buffer(reply),
                               asio::redirect_error(asio::use_awaitable, ec));
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

  // The edge drains: the session decides whether to answer 421 now.
  void BeginDrain() {
    asio::post(strand_, [self = shared_from_this()] {
      self->draining_ = true;
      if (!self->session_ || self->finished_ || !self->got_map_) return;
      self->session_->SetDraining();
      if (self->session_->closed() && self->reading_) {
        // Stop the read so that the loop sends the 421.
        boost::system::error_code ec;
        self->socket_.cancel(ec);
      }
      self->Wake();
    });
  }

  // Closes the connection from outside (shutdown).
  void Shutdown() {
    asio::post(strand_, [self = shared_from_this()] {
      boost::system::error_code ec;
      self->socket_.close(ec);
      self->Wake();
    });
  }

  // SessionOutput.
  void Write(std::string bytes) override { out_ += bytes; }
  void SendEvent(const v1::Event& event, bool notify_only) override {
    if (!stream_ || stream_done_) return;
    v1::SessionRequest req;
    *req.mutable_event() = event;
    req.set_notify_only(notify_only);
    stream_->Send(std::move(req));
  }
  void SendData(const std::string& tx, std::string chunk) override {
    if (!stream_ || stream_done_) return;
    v1::SessionRequest req;
    req.mutable_data()->set_transaction_id(tx);
    req.mutable_data()->set_data(std::move(chunk));
    stream_->Send(std::move(req));
  }
  void Close() override { close_after_flush_ = true; }
  void StartTls() override { start_tls_ = true; }

 private:
  // Reads the PROXY header (within --idle-timeout-s) and takes the
  // addresses it gives; whatever follows it is left in `early`. False when
  // the connection was closed: no header, a broken one, or none in time.
  asio::awaitable<bool> ReadProxyHeader(v1::SessionInfo& info,
                                        std::string& early) {
    const auto& opts = server_->options();
    const std::string peer = info.client().ip();
    idle_.expires_after(opts.idle_timeout);
    idle_.async_wait([self = shared_from_this()](boost::system::error_code e) {
      if (e || self->proxy_read_) return;
      self->proxy_timed_out_ = true;
      boost::system::error_code ignored;
      self->socket_.close(ignored);
    });
    std::string in;
    ProxyParse p;
    while (p.state == ProxyParse::State::kNeedMore) {
      boost::system::error_code ec;
      size_t n = co_await socket_.async_read_some(
          asio::buffer(buf_), asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        p.error = proxy_timed_out_ ? "no PROXY header in time"
                                   : "closed before the PROXY header";
        break;
      }
      in.append(buf_, n);
      p = ParseProxyHeader(in, *opts.proxy_protocol);
    }
    proxy_read_ = true;
    idle_.cancel();
    finished_ = p.state != ProxyParse::State::kDone;
    if (finished_) {
      spdlog::warn("session {}: refused proxy {}: {}", session_id_, peer,
                   p.error);
      boost::system::error_code ec;
      if (socket_.is_open()) {
        const std::string reply =
            MakeReply(421, "4.7.0",
                      absl::StrCat(opts.hostname, " Error: bad PROXY header"))
                .Format();
        co_await asio::async_write(
            socket_, asio::buffer(reply),
            asio::redirect_error(asio::use_awaitable, ec));
      }
      socket_.shutdown(tcp::socket::shutdown_both, ec);
      socket_.close(ec);
      co_return false;
    }
    early = in.substr(p.consumed);
    if (p.header.has_addresses) {
      info.mutable_client()->set_ip(NormalizeIp(p.header.source_ip));
      info.mutable_client()->set_port(p.header.source_port);
      info.mutable_server()->set_ip(NormalizeIp(p.header.dest_ip));
      info.mutable_server()->set_port(p.header.dest_port);
    }
    co_return true;
  }

  // Reads and writes go through TLS once STARTTLS completed.
  asio::awaitable<size_t> ReadSome(asio::mutable_buffer b,
                                   boost::system::error_code& ec) {
    if (tls_) {
      co_return co_await tls_->async_read_some(
          b, asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return co_await socket_.async_read_some(
        b, asio::redirect_error(asio::use_awaitable, ec));
  }
  asio::awaitable<void> WriteAll(asio::const_buffer b,
                                 boost::system::error_code& ec) {
    if (tls_) {
      co_await asio::async_write(*tls_, b,
                                 asio::redirect_error(asio::use_awaitable, ec));
    } else {
      co_await asio::async_write(socket_, b,
                                 asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  // The server side of the TLS handshake after STARTTLS's 220. Nothing was
  // read from the socket since the STARTTLS line: whatever the client sends
  // now goes to the handshake, and what it sent before was dropped by the
  // session.
  asio::awaitable<bool> Handshake() {
    tls_context_ = server_->tls_context();
    boost::system::error_code ec;
    if (tls_context_ == nullptr) {
      socket_.close(ec);
      co_return false;
    }
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_,
                                                             *tls_context_);
    handshaking_ = true;
    last_activity_ = Clock::now();
    co_await tls_->async_handshake(
        asio::ssl::stream_base::server,
        asio::redirect_error(asio::use_awaitable, ec));
    handshaking_ = false;
    last_activity_ = Clock::now();
    if (ec) {
      spdlog::info("session {}: TLS handshake failed: {}", session_id_,
                   ec.message());
      socket_.close(ec);
      co_return false;
    }
    SSL* ssl = tls_->native_handle();
    v1::TlsState state;
    state.set_active(true);
    state.set_version(SSL_get_version(ssl));
    state.set_cipher(SSL_get_cipher_name(ssl));
    spdlog::info("session {}: TLS {} {}", session_id_, state.version(),
                 state.cipher());
    session_->OnTlsStarted(state);
    co_return true;
  }

  void OpenStream(const v1::SessionInfo& info) {
    std::weak_ptr<Connection> weak = shared_from_this();
    // Callbacks of an earlier attempt's stream are ignored.
    const uint64_t gen = ++stream_gen_;
    BrokerStream::Handler h;
    h.on_response = [weak, gen](v1::SessionResponse resp) {
      if (auto c = weak.lock()) {
        asio::post(c->strand_, [c, gen, resp = std::move(resp)] {
          if (c->stream_gen_ == gen) c->OnResponse(resp);
        });
      }
    };
    h.on_writable = [weak] {
      if (auto c = weak.lock()) asio::post(c->strand_, [c] { c->Wake(); });
    };
    h.on_done = [weak, gen](grpc::Status status) {
      if (auto c = weak.lock()) {
        asio::post(c->strand_, [c, gen, status] {
          if (c->stream_gen_ != gen) return;
          c->stream_done_ = true;
          c->stream_error_ = status.error_message();
          if (c->got_map_ && c->session_ && !c->finished_) {
            spdlog::warn("session {}: broker stream ended: {}", c->session_id_,
                         status.error_message());
            c->session_->OnBrokerLost();
          }
          c->Wake();
        });
      }
    };
    stream_ = BrokerStream::Open(server_->stub(), std::move(h));
    v1::SessionRequest start;
    *start.mutable_start()->mutable_session() = info;
    stream_->Send(std::move(start));
  }

  void OnResponse(const v1::SessionResponse& resp) {
    if (resp.has_binding_map()) {
      session_->SetBindingMap(resp.binding_map());
      got_map_ = true;
    } else if (resp.has_result()) {
      session_->OnResult(resp.result());
    }
    Wake();
  }

  void Wake() {
    woken_ = true;
    wake_.cancel();
  }

  // Waits for Wake() or the deadline; true when woken.
  asio::awaitable<bool> WaitWake(Clock::time_point deadline) {
    if (woken_) {
      woken_ = false;
      co_return true;
    }
    wake_.expires_at(deadline);
    boost::system::error_code ec;
    co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    const bool woke = woken_;
    woken_ = false;
    co_return woke;
  }

  asio::awaitable<void> Flush() {
    Publish();
    flushing_ = true;
    while (!out_.empty() && socket_.is_open()) {
      std::string w;
      w.swap(out_);
      boost::system::error_code ec;
      co_await WriteAll(asio::buffer(w), ec);
      if (ec) {
        socket_.close(ec);
        break;
      }
    }
    flushing_ = false;
    if (close_after_flush_ && socket_.is_open()) {
      boost::system::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_both, ec);
      socket_.close(ec);
    }
  }

  // Follows how far the client got after a read of `n` octets: the start of a
  // command line still incomplete, the start and size of the content.
  // A new clock makes the watchdog look at its deadlines again.
  void Progress(size_t n) {
    bool changed = false;
    const auto now = Clock::now();
    if (session_->in_content()) {
      if (!content_started_) {
        content_started_ = now;
        content_bytes_ = 0;
        content_paused_ = {};
        changed = true;
      }
      content_bytes_ += n;
    } else {
      content_started_.reset();
    }
    const bool partial = !session_->in_content() && !session_->waiting() &&
                         session_->buffered() > 0;
    if (partial && !command_started_) {
      command_started_ = now;
      changed = true;
    } else if (!partial) {
      command_started_.reset();
    }
    if (changed) idle_.cancel();
  }

  // When the content will have come too slowly if nothing more arrives.
  Clock::time_point ContentDeadline() const {
    const auto& opts = server_->options();
    if (!content_started_ || opts.data_min_rate == 0) {
      return Clock::time_point::max();
    }
    const auto earned = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(static_cast<double>(content_bytes_) /
                                      static_cast<double>(opts.data_min_rate)));
    return std::max(*content_started_ + content_paused_ + opts.data_rate_grace,
                    *content_started_ + content_paused_ + earned);
  }

  Clock::time_point CommandDeadline() const {
    const auto& opts = server_->options();
    if (!command_started_ || opts.command_timeout.count() == 0) {
      return Clock::time_point::max();
    }
    return *command_started_ + opts.command_timeout;
  }

  // Closes idle sessions (RFC 5321 §4.5.3.2 timeouts), and slow drips: a
  // command line not whole within --command-timeout-s, message content
  // slower than --data-min-rate.
  // Also ends sessions older than --max-session-s, busy or not.
  static asio::awaitable<void> Watchdog(std::shared_ptr<Connection> self) {
    const auto& opts = self->server_->options();
    const auto idle = opts.idle_timeout;
    const auto end = opts.max_session.count() > 0
                         ? self->started_at_ + opts.max_session
                         : Clock::time_point::max();
    while (self->socket_.is_open() && !self->finished_) {
      auto at = std::min({self->last_activity_ + idle, end,
                          self->CommandDeadline(), self->ContentDeadline()});
      if (self->paused_ && at <= Clock::now()) {
        // The clocks stand still while the edge keeps the client waiting.
        at = Clock::now() + std::chrono::seconds(1);
      }
      self->idle_.expires_at(at);
      boost::system::error_code ec;
      co_await self->idle_.async_wait(
          asio::redirect_error(asio::use_awaitable, ec));
      if (self->finished_ || !self->socket_.is_open()) co_return;
      const auto now = Clock::now();
      const bool too_long = end <= now;
      const bool waiting = self->session_->waiting() || self->paused_;
      const char* why = nullptr;
      const char* text = nullptr;
      if (too_long) {
        why = "too long";
        text = " Error: session too long";
      } else if (!waiting && self->last_activity_ + idle <= now) {
        why = "idle timeout";
        text = " Error: timeout exceeded";
      } else if (!waiting && self->CommandDeadline() <= now) {
        why = "command line too slow";
        text = " Error: command line too slow";
      } else if (!waiting && self->ContentDeadline() <= now) {
        why = "message content too slow";
        text = " Error: message content too slow";
      }
      if (why != nullptr) {
        spdlog::info("session {}: {}", self->session_id_, why);
        if (self->handshaking_) {
          // No reply can go out in the middle of a handshake.
          self->socket_.close(ec);
          co_return;
        }
        const std::string bye =
            MakeReply(421, "4.4.2", absl::StrCat(opts.hostname, text)).Format();
        if (self->flushing_) {
          // A write is under way: the 421 goes right after it, then the
          // connection closes. A client that does not read gets at most
          // another idle timeout for it.
          self->out_ += bye;
          self->close_after_flush_ = true;
          self->idle_.expires_after(idle);
          co_await self->idle_.async_wait(
              asio::redirect_error(asio::use_awaitable, ec));
          if (!self->finished_) self->socket_.close(ec);
          co_return;
        }
        co_await self->WriteAll(asio::buffer(bye), ec);
        self->socket_.close(ec);
        co_return;
      }
    }
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    boost::system::error_code ec;
    idle_.cancel();
    if (stream_) {
      if (!stream_done_ && got_map_) {
        v1::Event bye;
        bye.set_type(v1::EVENT_TYPE_DISCONNECT);
        *bye.mutable_session() = session_->info();
        SendEvent(bye, /*notify_only=*/true);
      }
      if (got_map_) {
        stream_->Close();
      } else {
        stream_->Cancel();
      }
    }
    socket_.close(ec);
    SessionsGauge().Add(-1);
    spdlog::info("session {} end", session_id_);
    server_->Untrack(this);
  }

  Server* const server_;
  // The socket's executor: a strand, so handlers of one connection never
  // run at once.
  asio::any_io_executor strand_;
  tcp::socket socket_;
  // Set once STARTTLS's handshake began.
  // The context the session's handshake used: a reload does not touch it.
  std::shared_ptr<asio::ssl::context> tls_context_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  bool start_tls_ = false;
  bool handshaking_ = false;
  bool reading_ = false;
  bool flushing_ = false;
  bool draining_ = false;
  const Clock::time_point started_at_ = Clock::now();
  char buf_[16384];
  asio::steady_timer wake_;
  asio::steady_timer idle_;
  bool woken_ = false;
  std::unique_ptr<Session> session_;
  mutable absl::Mutex snap_mu_;
  v1::EdgeSessionInfo snap_ ABSL_GUARDED_BY(snap_mu_);
  std::shared_ptr<BrokerStream> stream_;
  uint64_t stream_gen_ = 0;
  std::string session_id_;
  std::string out_;
  bool close_after_flush_ = false;
  bool got_map_ = false;
  bool stream_done_ = false;
  std::string stream_error_;
  bool finished_ = false;
  bool proxy_read_ = false;
  bool proxy_timed_out_ = false;
  // The watchdog's clocks: the incomplete command line's first octet, the
  // content's start, its octets, and the time the edge kept it waiting.
  std::optional<Clock::time_point> command_started_;
  std::optional<Clock::time_point> content_started_;
  uint64_t content_bytes_ = 0;
  bool paused_ = false;  // waiting for the broker, not reading
  Clock::duration content_paused_{};
  Clock::time_point last_activity_ = Clock::now();
};

Server::Server(asio::io_context& io, EdgeOptions options,
               std::shared_ptr<grpc::Channel> broker_channel)
    : io_(io),
      options_(std::move(options)),
      channel_(std::move(broker_channel)),
      stub_(v1::SessionService::NewStub(channel_)),
      acceptor_(io) {}

Server::~Server() = default;

namespace {

absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeTlsContext(
    const std::string& cert, const std::string& key) {
  auto ctx =
      std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  boost::system::error_code ec;
  ctx->set_options(
      asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
          asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use,
      ec);
  // No renegotiation: one handshake per session.
  SSL_CTX_set_options(ctx->native_handle(), SSL_OP_NO_RENEGOTIATION);
  if (!ec) ctx->use_certificate_chain_file(cert, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS certificate ", cert, ": ", ec.message()));
  }
  ctx->use_private_key_file(key, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS key ", key, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS key ", key, " does not belong to certificate ", cert));
  }
  return ctx;
}

// "subject, valid until date" of the context's certificate, for the log.
std::string DescribeCertificate(asio::ssl::context& ctx) {
  X509* x = SSL_CTX_get0_certificate(ctx.native_handle());
  if (x == nullptr) return "no certificate";
  char subject[256] = {0};
  X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
  std::string until = "?";
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(bio, X509_get0_notAfter(x)) == 1) {
      char* data = nullptr;
      const long n = BIO_get_mem_data(bio, &data);
      until.assign(data, static_cast<size_t>(n));
    }
    BIO_free(bio);
  }
  return absl::StrCat(subject, ", valid until ", until);
}

Counter& TlsReloads(const char* result) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_edge_tls_reloads_total",
      "Loads of the STARTTLS certificate after start, by result.",
      {{"result", result}});
}

}  // namespace

absl::Status Server::ReloadTls(bool only_if_changed) {
  if (options_.tls_cert.empty()) return absl::OkStatus();
  // Both files as they are now: a rewrite or a rename over either shows.
  const std::string stamp = absl::StrCat(FileStamp(options_.tls_cert), ";",
                                         FileStamp(options_.tls_key));
  bool first;
  {
    absl::MutexLock lock(&tls_mu_);
    if (only_if_changed && stamp == tls_files_stamp_) return absl::OkStatus();
    first = tls_ == nullptr;
    // A file that does not load is not tried again until it changes.
    tls_files_stamp_ = stamp;
  }
  auto ctx = MakeTlsContext(options_.tls_cert, options_.tls_key);
  if (!ctx.ok()) {
    if (!first) {
      TlsReloads("error").Inc();
      spdlog::error("TLS certificate not reloaded, the current one stays: {}",
                    std::string(ctx.status().message()));
    }
    return ctx.status();
  }
  const std::string what = DescribeCertificate(**ctx);
  {
    absl::MutexLock lock(&tls_mu_);
    tls_ = std::move(*ctx);
  }
  if (first) {
    spdlog::info("TLS certificate {}", what);
  } else {
    TlsReloads("ok").Inc();
    spdlog::info("TLS certificate reloaded for new sessions: {}", what);
  }
  return absl::OkStatus();
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
      io_,
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
            auto conn = std::make_shared<Connection>(this, std::move(socket));
            asio::co_spawn(
                conn->strand(),
                [conn]() -> asio::awaitable<void> { co_await conn->Run(); },
                asio::detached);
            continue;
          }
          auto conn = std::make_shared<Connection>(this, std::move(socket));
          std::string why;
          if (!Track(conn, ip, &why)) {
            spdlog::info("refused a session from {}: {}", ip, why);
            asio::co_spawn(
                conn->strand(),
                [conn, why]() -> asio::awaitable<void> {
                  co_await conn->Refuse(why);
                },
                asio::detached);
            continue;
          }
          asio::co_spawn(
              conn->strand(),
              [conn]() -> asio::awaitable<void> { co_await conn->Run(); },
              asio::detached);
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
  asio::post(io_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
  for (auto& c : LiveConnections()) c->BeginDrain();
}

void Server::Stop() {
  asio::post(io_, [this] {
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
