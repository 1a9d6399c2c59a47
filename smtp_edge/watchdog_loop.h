// The watchdog's coroutine, one per connection: it sleeps until the next
// deadline of the session's clocks (watchdog.h) and, when one ran out, ends
// the session: 421 4.4.2 queued as the last thing the client gets and the
// connection closed once it is written (a client that does not read gets
// one more idle timeout for it), or closed at once in the middle of a TLS
// handshake, where no reply can go out. What it needs of its connection is
// WatchdogHost; the connection (connection.cc) is one.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "smtp_edge/watchdog.h"

namespace sinkline::edge {

class WatchdogHost {
 public:
  virtual ~WatchdogHost() = default;

  // The connection's clocks, and the timer on its strand that the watchdog
  // waits on (the connection cancels it when a clock starts).
  virtual WatchdogClocks& clocks() = 0;
  virtual boost::asio::steady_timer& watchdog_timer() = 0;
  // The connection finished, or its socket is closed: the watchdog stops.
  virtual bool over() const = 0;
  // An event waits for the broker: only the session's length counts.
  virtual bool session_waiting() const = 0;
  // STARTTLS's handshake is under way.
  virtual bool handshaking() const = 0;
  // Closes the socket now.
  virtual void CloseNow() = 0;
  // Queues `reply` as the last bytes the client gets, closes after they
  // are written, and starts the writer when none is under way.
  virtual void SendLastAndClose(std::string reply) = 0;
};

struct WatchdogReply {
  std::string hostname;                    // the 421's first word
  std::string session_id;                  // for the log
  std::chrono::seconds idle_timeout{300};  // how long the 421 may take
};

// Runs until the connection is over or the watchdog ended it. `host` stays
// alive while it runs.
boost::asio::awaitable<void> RunWatchdog(std::shared_ptr<WatchdogHost> host,
                                         WatchdogReply reply);

}  // namespace sinkline::edge
