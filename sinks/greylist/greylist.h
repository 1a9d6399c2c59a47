// The greylist sink: at RCPT, classic triplet greylisting. The triplet is
// the client's network (the /24 of an IPv4 address, the /64 of an IPv6
// one), the envelope sender and the recipient (both lower-cased). On first
// sight a triplet is refused with 451 4.7.1; a retry after `delay` (and
// within `retry_window` of the first sight) passes, and the triplet then
// passes at once until it has not been seen for `expire`.
//
// The state lives in a file, rewritten atomically (a temporary file, fsync,
// rename) at most every `flush_interval` after a change and when the sink
// stops, so it survives a restart.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sinkline/sdk/sink.h"

namespace sinkline::sinks {

struct GreylistOptions {
  absl::Duration delay = absl::Seconds(300);
  absl::Duration retry_window = absl::Hours(24);
  absl::Duration expire = absl::Hours(36 * 24);
  std::string state_file;  // empty: state in memory only
  absl::Duration flush_interval = absl::Seconds(1);
  std::string reply_text = "Greylisted, please try again later";
};

// The client part of the triplet: "192.0.2.0/24", "2001:db8:1:2::/64", or
// the text as given when it is not an IP address.
std::string ClientNetwork(absl::string_view ip);

// The greylist itself, without the sink around it; `now` is injectable.
class Greylist {
 public:
  enum class Decision { kFirstSeen, kTooEarly, kPassed, kKnown };
  struct Entry {
    absl::Time first_seen;
    absl::Time last_seen;
    bool passed = false;
  };

  Greylist(GreylistOptions options,
           std::function<absl::Time()> now = absl::Now);
  ~Greylist();

  // Reads the state file (a missing file is an empty state).
  absl::Status Load();
  // Writes the state file now (no-op without a state file).
  absl::Status Save();
  // Starts the thread that saves after changes.
  void StartFlusher();

  Decision Check(absl::string_view client_ip, absl::string_view sender,
                 absl::string_view recipient);

  size_t size() const;

  static std::string Key(absl::string_view client_ip, absl::string_view sender,
                         absl::string_view recipient);

 private:
  // Drops expired entries; mu_ held.
  void ExpireLocked(absl::Time now);
  absl::Status SaveLocked(std::unique_lock<std::mutex>& lock);

  const GreylistOptions options_;
  const std::function<absl::Time()> now_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Entry> entries_;
  bool dirty_ = false;
  bool stop_ = false;
  std::mutex save_mu_;  // one writer of the file at a time
  std::thread flusher_;
};

class GreylistSink final : public sdk::Sink {
 public:
  GreylistSink(Greylist& greylist, std::string reply_text)
      : greylist_(greylist), reply_text_(std::move(reply_text)) {}

  void OnRcpt(sdk::EventContext& ctx) override;

 private:
  Greylist& greylist_;
  const std::string reply_text_;
};

}  // namespace sinkline::sinks
