#include "smtp_edge/connection.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"
#include "smtp_edge/broker_client.h"
#include "smtp_edge/client_stream.h"
#include "smtp_edge/output_queue.h"
#include "smtp_edge/proxy_reader.h"
#include "smtp_edge/server.h"
#include "smtp_edge/session.h"
#include "smtp_edge/watchdog.h"
#include "smtp_edge/watchdog_loop.h"

namespace sinkline::edge {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

std::string RandomId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

Gauge& SessionsGauge() {
  return MetricsRegistry::Default().GetGauge("sinkline_edge_sessions",
                                             "Open SMTP sessions.");
}

Counter& StreamsParkedCounter() {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_edge_broker_streams_parked_total",
      "Broker streams closed because their session was idle "
      "(--broker-stream-idle-ms); each opens again at the next command.");
}

Counter& SessionsCounter() {
  return MetricsRegistry::Default().GetCounter("sinkline_edge_sessions_total",
                                               "SMTP sessions accepted.");
}

// Pause between attempts to reach a broker while a session waits at
// connect.
constexpr auto kRetryDelay = std::chrono::milliseconds(100);
// A session's read buffer starts small and grows while reads fill it.
constexpr size_t kFirstReadBuffer = 1024;
constexpr size_t kMaxReadBuffer = 16384;

WatchdogLimits LimitsOf(const EdgeOptions& opts) {
  WatchdogLimits l;
  l.idle_timeout = opts.idle_timeout;
  l.command_timeout = opts.command_timeout;
  l.data_min_rate = opts.data_min_rate;
  l.data_rate_grace = opts.data_rate_grace;
  l.max_session = opts.max_session;
  return l;
}

class AsioConnection final
    : public Connection,
      public SessionOutput,
      public WatchdogHost,
      public std::enable_shared_from_this<AsioConnection> {
 public:
  AsioConnection(Server* server, tcp::socket socket)
      : server_(server),
        strand_(socket.get_executor()),
        socket_(std::move(socket)),
        wake_(strand_),
        watchdog_timer_(strand_),
        park_timer_(strand_),
        clocks_(LimitsOf(server->options()), started_at_) {}

  void Start() override {
    asio::co_spawn(
        strand_,
        [self = shared_from_this()]() -> asio::awaitable<void> {
          co_await self->Run();
        },
        asio::detached);
  }

  void Refuse(std::string why) override {
    asio::co_spawn(
        strand_,
        [self = shared_from_this(), why]() -> asio::awaitable<void> {
          co_await self->SendRefusal(why);
        },
        asio::detached);
  }

  v1::EdgeSessionInfo Snapshot() const override {
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
      // Within --idle-timeout-s; whatever follows the header is early.
      ProxyRead header = co_await ReadProxyHeader(
          socket_, buf_, *opts.proxy_protocol, opts.idle_timeout);
      if (!header.ok) {
        finished_ = true;
        spdlog::warn("session {}: refused proxy {}: {}", session_id_,
                     proxy.ip(), header.error);
        co_await RefuseProxy(socket_, opts.hostname);
        co_return;
      }
      ApplyProxyAddresses(header.header, info);
      early = std::move(header.early);
      std::string why;
      if (!server_->Track(shared_from_this(), info.client().ip(), &why)) {
        spdlog::info("refused a session from {} (through proxy {}): {}",
                     info.client().ip(), proxy.ip(), why);
        co_await SendRefusal(why);
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

    if (!co_await ConnectBroker(info)) co_return;
    // The greeting waits (--greeting-delay-ms); a client that talks before
    // it is refused by the session.
    const auto greet_at = started_at_ + opts.greeting_delay;
    while (Clock::now() < greet_at && socket_.is_open()) {
      co_await WaitWake(greet_at);
    }
    if (socket_.is_open() && socket_.available(ec) > 0 && !ec) {
      size_t n = socket_.read_some(asio::buffer(buf_), ec);
      if (!ec) session_->Feed(absl::string_view(buf_.data(), n));
    }
    if (draining_) session_->SetDraining();
    session_->Start();
    asio::co_spawn(strand_,
                   RunWatchdog(shared_from_this(),
                               {opts.hostname, session_id_, opts.idle_timeout}),
                   asio::detached);
    for (;;) {
      co_await Flush();
      if (out_.writing() && socket_.is_open()) {
        // Another writer is under way (the watchdog's 421): it closes the
        // connection after its write and wakes this loop.
        co_await WaitWake(Clock::time_point::max());
        continue;
      }
      if (session_->closed() || !socket_.is_open()) break;
      if (start_tls_) {
        start_tls_ = false;
        if (!co_await Handshake()) break;
        continue;
      }
      if (session_->waiting() || (stream_ && stream_->queued() > 32)) {
        // The client cannot send while the edge waits: the clocks stop.
        clocks_.Pause(Clock::now());
        const bool woke = co_await WaitWake(Clock::now() + opts.broker_timeout);
        clocks_.Resume(Clock::now());
        if (!woke && session_->waiting()) {
          spdlog::warn("session {}: broker did not answer in time",
                       session_id_);
          session_->OnBrokerLost();
        }
        continue;
      }
      clocks_.Activity(Clock::now());
      ArmPark();
      reading_ = true;
      size_t n = co_await client_.ReadSome(asio::buffer(buf_), ec);
      reading_ = false;
      if (ec == asio::error::operation_aborted && session_->closed() &&
          socket_.is_open()) {
        continue;  // draining: the 421 is in out_
      }
      if (ec) break;
      if (out_.sealed()) continue;  // after the watchdog's 421: dropped
      clocks_.Activity(Clock::now());
      if (parked_ && !co_await Unpark()) co_return;
      session_->Feed(absl::string_view(buf_.data(), n));
      Progress(n);
      // Commands fit the first buffer; content that fills it gets a
      // larger one, up to kMaxReadBuffer.
      if (n == buf_.size() && buf_.size() < kMaxReadBuffer) {
        buf_.resize(std::min(buf_.size() * 4, kMaxReadBuffer));
      }
    }
    Finish();
  }

  // A session over the limits: 421 and close, no broker stream.
  asio::awaitable<void> SendRefusal(std::string why) {
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

  void BeginDrain() override {
    asio::post(strand_, [self = shared_from_this()] {
      self->draining_ = true;
      if (!self->session_ || self->finished_) return;
      if (!self->got_map_ && !self->parked_) return;
      self->session_->SetDraining();
      if (self->session_->closed() && self->reading_) {
        // Stop the read so that the loop sends the 421.
        boost::system::error_code ec;
        self->socket_.cancel(ec);
      }
      self->Wake();
    });
  }

  void Shutdown() override {
    asio::post(strand_, [self = shared_from_this()] {
      boost::system::error_code ec;
      self->socket_.close(ec);
      self->Wake();
    });
  }

  // SessionOutput.
  void Write(std::string bytes) override { out_.Append(bytes); }
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

  // WatchdogHost.
  WatchdogClocks& clocks() override { return clocks_; }
  asio::steady_timer& watchdog_timer() override { return watchdog_timer_; }
  bool over() const override { return finished_ || !socket_.is_open(); }
  bool session_waiting() const override { return session_->waiting(); }
  bool handshaking() const override { return handshaking_; }
  void CloseNow() override {
    boost::system::error_code ec;
    socket_.close(ec);
  }
  void SendLastAndClose(std::string reply) override {
    out_.AppendLast(reply);
    close_after_flush_ = true;
    if (out_.writing()) return;  // the writer under way takes it
    asio::co_spawn(
        strand_,
        [self = shared_from_this()]() -> asio::awaitable<void> {
          co_await self->Flush();
          self->Wake();
        },
        asio::detached);
  }

 private:
  // The server side of the TLS handshake after STARTTLS's 220. Nothing was
  // read from the socket since the STARTTLS line: whatever the client sends
  // now goes to the handshake, and what it sent before was dropped by the
  // session.
  asio::awaitable<bool> Handshake() {
    auto context = server_->tls_context();
    boost::system::error_code ec;
    if (context == nullptr) {
      socket_.close(ec);
      co_return false;
    }
    handshaking_ = true;
    clocks_.Activity(Clock::now());
    auto state = co_await client_.Handshake(std::move(context));
    handshaking_ = false;
    clocks_.Activity(Clock::now());
    if (!state.ok()) {
      spdlog::info("session {}: TLS handshake failed: {}", session_id_,
                   std::string(state.status().message()));
      socket_.close(ec);
      co_return false;
    }
    spdlog::info("session {}: TLS {} {}", session_id_, state->version(),
                 state->cipher());
    session_->OnTlsStarted(*state);
    co_return true;
  }

  // Opens the session's stream and waits for its binding map. A broker
  // that is restarting may refuse for a moment: try again until the
  // connect timeout, then give up with 421 4.3.0 and end the session.
  asio::awaitable<bool> ConnectBroker(const v1::SessionInfo& info) {
    const auto& opts = server_->options();
    const auto connect_deadline = Clock::now() + opts.broker_connect_timeout;
    boost::system::error_code ec;
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
    if (got_map_) co_return true;
    CountBrokerUnavailable("connect");
    spdlog::warn("session {}: no broker ({}); 421", session_id_,
                 stream_error_.empty() ? "timeout" : stream_error_);
    out_.Append(MakeReply(421, "4.3.0",
                          absl::StrCat(opts.hostname,
                                       " Service not available, try again "
                                       "later"))
                    .Format());
    co_await Flush();
    Finish();
    co_return false;
  }

  // --broker-stream-idle-ms: a session idle between transactions for that
  // long gives its stream back (half-closed, the broker frees its side);
  // the next input opens a new one and waits for its binding map before
  // the session sees it. A parked session's DISCONNECT (notify-only) is
  // not sent.
  void ArmPark() {
    const auto delay = server_->options().broker_stream_idle;
    if (delay.count() <= 0 || parked_ || !stream_ || !got_map_) return;
    park_timer_.expires_after(delay);
    park_timer_.async_wait(
        [weak = weak_from_this()](boost::system::error_code e) {
          if (auto c = weak.lock(); c && !e) c->MaybePark();
        });
  }
  void MaybePark() {
    if (finished_ || parked_ || !reading_ || !got_map_ || !stream_ ||
        stream_done_ || draining_ || close_after_flush_ || out_.writing() ||
        !session_->idle() || stream_->queued() > 0) {
      return;
    }
    parked_ = true;
    got_map_ = false;
    ++stream_gen_;  // the old stream's callbacks are ignored
    stream_->Close();
    stream_.reset();
    StreamsParkedCounter().Inc();
    spdlog::debug("session {}: idle, broker stream closed", session_id_);
  }
  asio::awaitable<bool> Unpark() {
    parked_ = false;
    clocks_.Pause(Clock::now());  // the client waits for the broker
    const bool ok = co_await ConnectBroker(session_->info());
    clocks_.Resume(Clock::now());
    if (ok && draining_) session_->SetDraining();
    co_return ok;
  }

  void OpenStream(const v1::SessionInfo& info) {
    std::weak_ptr<AsioConnection> weak = shared_from_this();
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

  // Writes what the queue holds, then closes the connection when asked to.
  // Every write to the client goes through here, one at a time: a Flush
  // that finds a write under way returns at once, and the writer under way
  // takes the bytes queued meanwhile before it ends.
  asio::awaitable<void> Flush() {
    Publish();
    if (out_.writing()) co_return;
    while (socket_.is_open()) {
      const std::string w = out_.Take();
      if (w.empty()) break;
      boost::system::error_code ec;
      co_await client_.WriteAll(asio::buffer(w), ec);
      out_.Done();
      if (ec) {
        socket_.close(ec);
        break;
      }
    }
    if (close_after_flush_ && socket_.is_open()) {
      boost::system::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_both, ec);
      socket_.close(ec);
    }
  }

  // Tells the clocks how far the client got after a read of `n` octets; a
  // new clock makes the watchdog look at its deadlines again.
  void Progress(size_t n) {
    const bool partial = !session_->waiting() && session_->buffered() > 0;
    if (clocks_.Progress(Clock::now(), n, session_->in_content(), partial)) {
      watchdog_timer_.cancel();
    }
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    boost::system::error_code ec;
    watchdog_timer_.cancel();
    park_timer_.cancel();
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
  // Plain, then TLS after STARTTLS.
  ClientStream client_{socket_};
  bool start_tls_ = false;
  bool handshaking_ = false;
  bool reading_ = false;
  bool draining_ = false;
  const Clock::time_point started_at_ = Clock::now();
  // Sized on demand: an idle session keeps kFirstReadBuffer octets.
  std::vector<char> buf_ = std::vector<char>(kFirstReadBuffer);
  asio::steady_timer wake_;
  asio::steady_timer watchdog_timer_;
  // --broker-stream-idle-ms; parked_: the idle session has no stream now.
  asio::steady_timer park_timer_;
  bool parked_ = false;
  bool woken_ = false;
  std::unique_ptr<Session> session_;
  mutable absl::Mutex snap_mu_;
  v1::EdgeSessionInfo snap_ ABSL_GUARDED_BY(snap_mu_);
  std::shared_ptr<BrokerStream> stream_;
  uint64_t stream_gen_ = 0;
  std::string session_id_;
  // What the client is owed, written by one writer at a time (Flush).
  OutputQueue out_;
  bool close_after_flush_ = false;
  bool got_map_ = false;
  bool stream_done_ = false;
  std::string stream_error_;
  bool finished_ = false;
  // The idle, command, content and session clocks the watchdog enforces.
  WatchdogClocks clocks_;
};

}  // namespace

std::shared_ptr<Connection> Connection::Make(Server* server,
                                             tcp::socket socket) {
  return std::make_shared<AsioConnection>(server, std::move(socket));
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

}  // namespace sinkline::edge
