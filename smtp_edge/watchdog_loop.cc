#include "smtp_edge/watchdog_loop.h"

#include <spdlog/spdlog.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "absl/strings/str_cat.h"
#include "smtp_edge/reply.h"

namespace sinkline::edge {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

// Closes idle sessions (RFC 5321 §4.5.3.2 timeouts), and slow drips: a
// command line not whole within --command-timeout-s, message content
// slower than --data-min-rate. Also ends sessions older than
// --max-session-s, busy or not.
asio::awaitable<void> RunWatchdog(std::shared_ptr<WatchdogHost> host,
                                  WatchdogReply reply) {
  asio::steady_timer& timer = host->watchdog_timer();
  WatchdogClocks& clocks = host->clocks();
  while (!host->over()) {
    timer.expires_at(clocks.NextCheck(Clock::now()));
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (host->over()) co_return;
    const auto expiry = clocks.Expired(Clock::now(), host->session_waiting());
    const char* why = WatchdogClocks::Why(expiry);
    if (why == nullptr) continue;
    spdlog::info("session {}: {}", reply.session_id, why);
    if (host->handshaking()) {
      // No reply can go out in the middle of a handshake.
      host->CloseNow();
      co_return;
    }
    // The 421 is the last thing queued, written after whatever is under
    // way (two writes at once would mix on a TLS stream), then the
    // connection closes. A client that does not read gets at most another
    // idle timeout for it.
    host->SendLastAndClose(
        MakeReply(
            421, "4.4.2",
            absl::StrCat(reply.hostname, WatchdogClocks::ReplyText(expiry)))
            .Format());
    timer.expires_after(reply.idle_timeout);
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!host->over()) host->CloseNow();
    co_return;
  }
}

}  // namespace sinkline::edge
