#include "sink_broker/smtp_relay.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/concurrency_window.h"
#include "sink_broker/message_edit.h"
#include "sink_broker/relay_connection.h"
#include "sink_broker/relay_transaction.h"
#include "sinkline/common/address.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

absl::StatusOr<RelayTls> ParseRelayTls(absl::string_view name) {
  if (name == "none") return RelayTls::kNone;
  if (name == "may") return RelayTls::kMay;
  if (name == "encrypt") return RelayTls::kEncrypt;
  if (name == "verify") return RelayTls::kVerify;
  return absl::InvalidArgumentError(absl::StrCat(
      "--relay-tls=", name, ": none, may, encrypt or verify expected"));
}

const char* RelayTlsName(RelayTls tls) {
  switch (tls) {
    case RelayTls::kNone:
      return "none";
    case RelayTls::kMay:
      return "may";
    case RelayTls::kEncrypt:
      return "encrypt";
    case RelayTls::kVerify:
      return "verify";
  }
  return "?";
}

std::string DotStuff(absl::string_view data, DotStuffState& state) {
  std::string out;
  out.reserve(data.size() + 16);
  for (char c : data) {
    if (c == '\n' && !state.after_cr) out.push_back('\r');
    if (state.at_line_start && c == '.') out.push_back('.');
    out.push_back(c);
    state.at_line_start = c == '\n';
    state.after_cr = c == '\r';
  }
  return out;
}

namespace {

Counter& ConnectionsCounter(const char* how) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_connections_total",
      "SMTP connections to the next hop: opened, or reused from the cache.",
      {{"how", how}});
}

Counter& DeliveriesCounter(const char* result) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_deliveries_total",
      "Recipients by what the next hop did: delivered, deferred (4xx, down, "
      "timeout), refused (5xx).",
      {{"result", result}});
}

Gauge& InFlightGauge() {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_broker_relay_in_flight",
      "Messages being handed to the next hop now.");
}

Gauge& WindowGauge(const std::string& destination) {
  return MetricsRegistry::Default().GetGauge(
      "sinkline_broker_relay_concurrency_window",
      "Messages that may be in flight to the destination now (slow start: "
      "from --relay-initial-destination-concurrency, one more per delivery "
      "up to --relay-destination-concurrency, one fewer per failed "
      "connection).",
      {{"destination", destination}});
}

}  // namespace

using relay::Awaitable;
using relay::Connection;

// What one message carries through the relay.
struct SmtpRelayBackend::Delivery {
  v1::QueueEntry entry;
  std::string content_path;
  int fd = -1;
  SubmitDone done;
  ~Delivery() {
    if (fd >= 0) ::close(fd);
  }
};

// The relay's asynchronous side: one I/O thread runs every delivery as a
// coroutine; the connection cache (idle connections, newest last, reaped
// after `cache_idle`); the slow-start window that bounds deliveries in
// flight (the rest wait in order, holding no thread); a small pool for the
// next hop's DNS lookups (c-ares polled with a deadline), which only a new
// connection needs.
class SmtpRelayBackend::Engine {
 public:
  Engine(const SmtpRelayOptions& options, const SmtpRelayBackend& backend)
      : options_(options),
        backend_(backend),
        window_(options.initial_destination_concurrency,
                options.destination_concurrency),
        window_gauge_(WindowGauge(options.next_hop)),
        work_(asio::make_work_guard(io_)),
        reaper_(io_) {
    window_gauge_.Set(window_.window());
    thread_ = std::thread([this] { io_.run(); });
    if (options_.cache_idle.count() > 0) {
      asio::post(io_, [this] { ScheduleReap(); });
    }
  }

  ~Engine() {
    {
      // Deliveries end on their own (every step has a deadline); the
      // submitter waits for them before the backend goes.
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Engine::Idle));
      stopping_ = true;
    }
    // On the I/O thread: the reaper stops and idle connections get QUIT.
    asio::post(io_, [this] {
      reaper_.cancel();
      std::deque<std::unique_ptr<Connection>> idle;
      {
        absl::MutexLock lock(&mu_);
        idle.swap(idle_);
      }
      for (auto& c : idle) Quit(std::move(c));
    });
    work_.reset();
    thread_.join();  // once the QUITs are written (each bounded by 1 s)
    dns_.join();
  }

  // Starts the delivery now if the window admits it, or once it does.
  void Start(std::shared_ptr<Delivery> d) {
    {
      absl::MutexLock lock(&mu_);
      if (!window_.Admits(in_flight_)) {
        waiting_.push_back(std::move(d));
        return;
      }
      ++in_flight_;
    }
    InFlightGauge().Add(1);
    Spawn(std::move(d));
  }

 private:
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_flight_ == 0 && waiting_.empty();
  }

  void Spawn(std::shared_ptr<Delivery> d) {
    asio::co_spawn(io_, Deliver(std::move(d)), asio::detached);
  }

  // A delivery is over: its place goes to the next one waiting.
  void Finished() {
    std::vector<std::shared_ptr<Delivery>> next;
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      while (!waiting_.empty() && window_.Admits(in_flight_)) {
        next.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
        ++in_flight_;
      }
    }
    InFlightGauge().Add(static_cast<double>(next.size()) - 1);
    for (auto& d : next) Spawn(std::move(d));
  }

  // Slow start's feedback: a delivery completed in step with the next hop,
  // or a connection to it failed.
  void Feedback(bool success) {
    absl::MutexLock lock(&mu_);
    const int before = window_.window();
    if (success) {
      window_.Success();
    } else {
      window_.Failure();
    }
    if (window_.window() != before) window_gauge_.Set(window_.window());
  }

  // The newest idle connection still fresh enough, or null.
  std::unique_ptr<Connection> Take() {
    absl::MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    while (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      if (now - c->idle_since < options_.cache_idle) return c;
      Quit(std::move(c));
    }
    return nullptr;
  }

  // After a transaction: kept for the next message, or closed.
  void Put(std::unique_ptr<Connection> c) {
    if (options_.cache_idle.count() <= 0 || !c->open() ||
        (options_.reuse_limit > 0 && c->transactions >= options_.reuse_limit)) {
      return Quit(std::move(c));
    }
    c->idle_since = std::chrono::steady_clock::now();
    absl::MutexLock lock(&mu_);
    if (!stopping_ && static_cast<int>(idle_.size()) <
                          std::max(1, options_.destination_concurrency)) {
      idle_.push_back(std::move(c));
      return;
    }
    Quit(std::move(c));
  }

  // QUIT (bounded by 1 s) and close, on the I/O thread, nobody waiting.
  void Quit(std::unique_ptr<Connection> c) {
    asio::co_spawn(io_, QuitAndClose(std::move(c)), asio::detached);
  }
  static Awaitable<void> QuitAndClose(std::unique_ptr<Connection> c) {
    co_await c->Quit();
  }

  void ScheduleReap() {
    reaper_.expires_after(
        std::max(std::chrono::milliseconds(50), options_.cache_idle / 2));
    reaper_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        const auto now = std::chrono::steady_clock::now();
        // Oldest first: idle_ is in the order connections were put back.
        while (!idle_.empty() &&
               now - idle_.front()->idle_since >= options_.cache_idle) {
          Quit(std::move(idle_.front()));
          idle_.pop_front();
        }
      }
      ScheduleReap();
    });
  }

  // The next hop's addresses, looked up off the I/O thread.
  Awaitable<absl::StatusOr<std::vector<RelayTarget>>> Resolve() {
    co_return co_await asio::co_spawn(
        dns_,
        [this]() -> Awaitable<absl::StatusOr<std::vector<RelayTarget>>> {
          co_return ResolveNextHop(*backend_.hop_, options_.dns);
        },
        asio::use_awaitable);
  }

  Awaitable<void> Deliver(std::shared_ptr<Delivery> d) {
    absl::StatusOr<SubmitOutcome> result;
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::unique_ptr<Connection> c = Take();
      const bool reused = c != nullptr;
      if (reused) {
        ConnectionsCounter("reused").Inc();
      } else {
        if (!backend_.init_.ok()) {
          result = absl::UnavailableError(backend_.init_.message());
          break;
        }
        auto targets = co_await Resolve();
        if (!targets.ok()) {
          result = targets.status();
          break;
        }
        c = std::make_unique<Connection>(io_, options_, backend_.tls_.get());
        ConnectionsCounter("opened").Inc();
        absl::Status st = co_await c->Open(std::move(*targets));
        if (!st.ok()) {
          Feedback(false);  // refused, timed out, 4xx at connect, TLS
          result = st;
          break;
        }
      }
      auto t = co_await relay::Transaction(*c, reused, d->entry, d->fd,
                                           d->content_path);
      if (t.stale && reused && ::lseek(d->fd, 0, SEEK_SET) == 0) {
        continue;  // the cached connection was dead: try a fresh one
      }
      result = std::move(t.outcome);
      if (result.ok() ||
          result.status().code() == absl::StatusCode::kFailedPrecondition) {
        Feedback(true);
        Put(std::move(c));  // in step with the next hop: reusable
      } else {
        c->Close();
      }
      break;
    }
    CountDeliveries(d->entry, result);
    SubmitDone done = std::move(d->done);
    d.reset();  // the content file is closed before the caller hears
    Finished();
    done(std::move(result));
  }

  static void CountDeliveries(const v1::QueueEntry& entry,
                              const absl::StatusOr<SubmitOutcome>& result) {
    const int all = entry.envelope().recipients_size();
    if (result.ok()) {
      const int refused = result->refused.size();
      const int deferred = result->deferred.size();
      DeliveriesCounter("delivered").Inc(all - refused - deferred);
      if (refused) DeliveriesCounter("refused").Inc(refused);
      if (deferred) DeliveriesCounter("deferred").Inc(deferred);
    } else {
      DeliveriesCounter(result.status().code() ==
                                absl::StatusCode::kFailedPrecondition
                            ? "refused"
                            : "deferred")
          .Inc(all);
    }
  }

  // First: destroyed last, after every socket and timer bound to it.
  asio::io_context io_{1};
  const SmtpRelayOptions& options_;
  const SmtpRelayBackend& backend_;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Delivery>> waiting_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  ConcurrencyWindow window_ ABSL_GUARDED_BY(mu_);
  Gauge& window_gauge_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::steady_timer reaper_;
  // Lookups wait on c-ares with a deadline: two at once is plenty for one
  // next hop (only new connections look it up).
  asio::thread_pool dns_{2};
  std::thread thread_;
};

SmtpRelayBackend::SmtpRelayBackend(SmtpRelayOptions options)
    : options_(std::move(options)), hop_(ParseNextHop(options_.next_hop)) {
  init_ = hop_.status();
  if (options_.tls != RelayTls::kNone) {
    auto ctx = relay::MakeTlsContext(options_);
    if (ctx.ok()) {
      tls_ = std::move(*ctx);
    } else if (init_.ok()) {
      init_ = ctx.status();
    }
  }
  engine_ = std::make_unique<Engine>(options_, *this);
}

absl::StatusOr<std::unique_ptr<SmtpRelayBackend>> SmtpRelayBackend::Create(
    SmtpRelayOptions options) {
  auto backend = std::make_unique<SmtpRelayBackend>(std::move(options));
  if (!backend->init_.ok()) return backend->init_;
  return backend;
}

SmtpRelayBackend::~SmtpRelayBackend() = default;

void SmtpRelayBackend::SubmitAsync(const v1::QueueEntry& entry,
                                   const std::string& content_path,
                                   SubmitDone done) {
  // Nothing that is not a mailbox goes into MAIL FROM / RCPT TO, whatever
  // wrote the envelope (the edits were checked; a spool file may be old).
  const bool utf8 = EnvelopeIsUtf8(entry.envelope());
  if (auto st =
          ValidateEnvelopeAddress(entry.envelope().mail_from(), true, utf8);
      !st.ok()) {
    return done(
        absl::FailedPreconditionError(absl::StrCat("sender: ", st.message())));
  }
  for (const auto& r : entry.envelope().recipients()) {
    if (auto st = ValidateEnvelopeAddress(r.address(), false, utf8); !st.ok()) {
      return done(absl::FailedPreconditionError(
          absl::StrCat("recipient: ", st.message())));
    }
  }
  int fd = ::open(content_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return done(absl::UnavailableError(
        absl::StrCat("open ", content_path, ": ", strerror(errno))));
  }
  auto d = std::make_shared<Delivery>();
  d->entry = entry;
  d->content_path = content_path;
  d->fd = fd;
  d->done = std::move(done);
  engine_->Start(std::move(d));
}

absl::StatusOr<SubmitOutcome> SmtpRelayBackend::Submit(
    const v1::QueueEntry& entry, const std::string& content_path) {
  std::promise<absl::StatusOr<SubmitOutcome>> promise;
  auto result = promise.get_future();
  SubmitAsync(entry, content_path, [&promise](absl::StatusOr<SubmitOutcome> r) {
    promise.set_value(std::move(r));
  });
  return result.get();
}

}  // namespace sinkline::broker
