// What the broker knows of each message, for operators: its state, envelope,
// size, the reason it is held, quarantined or failed, and its history. The
// admin service lists and shows them; the spool stays the durable record.
#pragma once

#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "sinkline/v1/admin.pb.h"

namespace sinkline::broker {

class MessageTable {
 public:
  struct Limits {
    // Submitted (and deleted) messages kept for inspection, oldest
    // forgotten first.
    size_t keep_submitted = 1000;
    // History entries kept per message (the first and the latest).
    size_t history_per_message = 64;
  };
  MessageTable() : MessageTable(Limits{}) {}
  explicit MessageTable(Limits limits) : limits_(limits) {}

  // A message the broker now holds, in `state`, keyed by `key` (the queue
  // id; for RECEIVING, "<session>-<transaction>").
  void Track(const std::string& key, v1::MessageState state,
             const v1::Envelope& envelope, uint64_t size,
             const std::string& what);
  // Moves a message to `state`; `reason` is kept for HELD, QUARANTINED and
  // FAILED. `what` goes to its history.
  void SetState(const std::string& key, v1::MessageState state,
                const std::string& what, const std::string& reason = "");
  void SetEnvelope(const std::string& key, const v1::Envelope& envelope,
                   uint64_t size);
  // Adds to a message's history.
  void Note(const std::string& key, const std::string& what);
  // Forgets a message (an aborted transaction, a message that left).
  void Forget(const std::string& key);

  std::optional<v1::MessageState> State(const std::string& key) const;
  // Messages in `state` (all for UNSPECIFIED), oldest first; without leases.
  std::vector<v1::MessageInfo> List(v1::MessageState state) const;
  std::optional<v1::MessageInfo> Get(const std::string& key) const;
  // Messages per state.
  std::map<v1::MessageState, size_t> CountByState() const;

 private:
  struct Entry {
    uint64_t order = 0;
    v1::MessageInfo info;
  };
  void AddHistoryLocked(Entry& e, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TrimSubmittedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Limits limits_;
  mutable absl::Mutex mu_;
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> submitted_ ABSL_GUARDED_BY(mu_);
};

// "leased", "held", ... as used in logs and metrics labels.
std::string MessageStateName(v1::MessageState state);

}  // namespace sinkline::broker
