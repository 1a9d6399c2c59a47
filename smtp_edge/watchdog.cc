#include "smtp_edge/watchdog.h"

#include <algorithm>

namespace sinkline::edge {

const char* WatchdogClocks::Why(Expiry e) {
  switch (e) {
    case Expiry::kNone:
      return nullptr;
    case Expiry::kSessionTooLong:
      return "too long";
    case Expiry::kIdle:
      return "idle timeout";
    case Expiry::kCommandTooSlow:
      return "command line too slow";
    case Expiry::kContentTooSlow:
      return "message content too slow";
  }
  return nullptr;
}

const char* WatchdogClocks::ReplyText(Expiry e) {
  switch (e) {
    case Expiry::kNone:
      return nullptr;
    case Expiry::kSessionTooLong:
      return " Error: session too long";
    case Expiry::kIdle:
      return " Error: timeout exceeded";
    case Expiry::kCommandTooSlow:
      return " Error: command line too slow";
    case Expiry::kContentTooSlow:
      return " Error: message content too slow";
  }
  return nullptr;
}

void WatchdogClocks::Resume(Clock::time_point now) {
  if (!paused_at_) return;
  const auto paused = now - *paused_at_;
  paused_at_.reset();
  content_paused_ += paused;
  if (command_started_) *command_started_ += paused;
}

bool WatchdogClocks::Progress(Clock::time_point now, size_t n, bool in_content,
                              bool partial_command) {
  bool changed = false;
  if (in_content) {
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
  const bool partial = !in_content && partial_command;
  if (partial && !command_started_) {
    command_started_ = now;
    changed = true;
  } else if (!partial) {
    command_started_.reset();
  }
  return changed;
}

WatchdogClocks::Clock::time_point WatchdogClocks::ContentDeadline() const {
  if (!content_started_ || limits_.data_min_rate == 0) {
    return Clock::time_point::max();
  }
  const auto earned =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
          static_cast<double>(content_bytes_) /
          static_cast<double>(limits_.data_min_rate)));
  return std::max(*content_started_ + content_paused_ + limits_.data_rate_grace,
                  *content_started_ + content_paused_ + earned);
}

WatchdogClocks::Clock::time_point WatchdogClocks::CommandDeadline() const {
  if (!command_started_ || limits_.command_timeout.count() == 0) {
    return Clock::time_point::max();
  }
  return *command_started_ + limits_.command_timeout;
}

WatchdogClocks::Clock::time_point WatchdogClocks::SessionEnd() const {
  return limits_.max_session.count() > 0 ? started_at_ + limits_.max_session
                                         : Clock::time_point::max();
}

WatchdogClocks::Clock::time_point WatchdogClocks::NextCheck(
    Clock::time_point now) const {
  auto at = std::min({last_activity_ + limits_.idle_timeout, SessionEnd(),
                      CommandDeadline(), ContentDeadline()});
  if (paused() && at <= now) {
    // The clocks stand still while the edge keeps the client waiting.
    at = now + std::chrono::seconds(1);
  }
  return at;
}

WatchdogClocks::Expiry WatchdogClocks::Expired(Clock::time_point now,
                                               bool session_waiting) const {
  const bool waiting = session_waiting || paused();
  if (SessionEnd() <= now) return Expiry::kSessionTooLong;
  if (waiting) return Expiry::kNone;
  if (last_activity_ + limits_.idle_timeout <= now) return Expiry::kIdle;
  if (CommandDeadline() <= now) return Expiry::kCommandTooSlow;
  if (ContentDeadline() <= now) return Expiry::kContentTooSlow;
  return Expiry::kNone;
}

}  // namespace sinkline::edge
