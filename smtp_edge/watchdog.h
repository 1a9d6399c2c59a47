// The clocks that bound one SMTP session, with no socket and no timer: the
// connection tells them what happened and when, and asks when to look next
// and what, if anything, has run out. RFC 5321 §4.5.3.2 timeouts (idle, a
// command line not whole in time), a minimum rate for message content, and
// a longest session.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace sinkline::edge {

struct WatchdogLimits {
  std::chrono::seconds idle_timeout{300};
  // A command line must be whole this long after its first octet (0: no
  // limit).
  std::chrono::seconds command_timeout{300};
  // Content must come at least this fast on average once it has gone on
  // for `data_rate_grace` (0: no limit).
  uint64_t data_min_rate = 1024;  // octets per second
  std::chrono::seconds data_rate_grace{30};
  // The session ends this long after it began, busy or not (0: never).
  std::chrono::seconds max_session{3600};
};

class WatchdogClocks {
 public:
  using Clock = std::chrono::steady_clock;

  // What ran out, most important first.
  enum class Expiry {
    kNone,
    kSessionTooLong,
    kIdle,
    kCommandTooSlow,
    kContentTooSlow,
  };
  // For the log ("idle timeout") and for the 421 4.4.2 text after the
  // host name (" Error: timeout exceeded"); null for kNone.
  static const char* Why(Expiry e);
  static const char* ReplyText(Expiry e);

  WatchdogClocks(WatchdogLimits limits, Clock::time_point started)
      : limits_(limits), started_at_(started), last_activity_(started) {}

  // The client did something: a read came back, a handshake went on.
  void Activity(Clock::time_point now) { last_activity_ = now; }

  // The edge keeps the client waiting (for the broker, for the client's
  // own queue to drain): it cannot send, so the clocks stand still.
  void Pause(Clock::time_point now) { paused_at_ = now; }
  void Resume(Clock::time_point now);
  bool paused() const { return paused_at_.has_value(); }

  // After a read of `n` octets: whether the session now reads message
  // content, and whether a command line is incomplete (and not waiting for
  // the broker). True when a clock started, so that the watchdog must look
  // at its deadlines again.
  bool Progress(Clock::time_point now, size_t n, bool in_content,
                bool partial_command);

  // When the incomplete command line will have taken too long.
  Clock::time_point CommandDeadline() const;
  // When the content will have come too slowly if nothing more arrives.
  Clock::time_point ContentDeadline() const;
  // When the session is over, busy or not.
  Clock::time_point SessionEnd() const;

  // When the watchdog should look again: the first deadline, but never in
  // the past while the clocks stand still.
  Clock::time_point NextCheck(Clock::time_point now) const;
  // What ran out at `now`. `session_waiting`: an event waits for the
  // broker; then, as while paused, only the session's length counts.
  Expiry Expired(Clock::time_point now, bool session_waiting) const;

 private:
  const WatchdogLimits limits_;
  const Clock::time_point started_at_;
  Clock::time_point last_activity_;
  // The incomplete command line's first octet, the content's start, its
  // octets, and the time the edge kept it waiting.
  std::optional<Clock::time_point> command_started_;
  std::optional<Clock::time_point> content_started_;
  uint64_t content_bytes_ = 0;
  Clock::duration content_paused_{};
  std::optional<Clock::time_point> paused_at_;
};

}  // namespace sinkline::edge
