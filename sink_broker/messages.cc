#include "sink_broker/messages.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {

using google::protobuf::util::TimeUtil;

std::string MessageStateName(v1::MessageState state) {
  std::string name = v1::MessageState_Name(state);
  absl::string_view prefix = "MESSAGE_STATE_";
  if (name.rfind(std::string(prefix), 0) == 0)
    name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

namespace {

// Messages the broker holds, by state (a gauge kept with the table).
void Bump(v1::MessageState state, double delta) {
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_messages",
                "Messages the broker knows of, by state (submitted ones are "
                "kept for a while for inspection).",
                {{"state", MessageStateName(state)}})
      .Add(delta);
}

}  // namespace

void MessageTable::AddHistoryLocked(Entry& e, const std::string& what) {
  auto* history = e.info.mutable_history();
  if (limits_.history_per_message > 1 &&
      static_cast<size_t>(history->size()) >= limits_.history_per_message) {
    // Keep the first entry (how it began) and the latest ones.
    history->DeleteSubrange(1, 1);
  }
  auto* h = history->Add();
  *h->mutable_time() = sinkline::NowTimestamp();
  h->set_what(what);
}

void MessageTable::TrimSubmittedLocked() {
  while (submitted_.size() > limits_.keep_submitted) {
    auto it = entries_.find(submitted_.front());
    if (it != entries_.end() &&
        (it->second.info.state() == v1::MESSAGE_STATE_SUBMITTED ||
         it->second.info.state() == v1::MESSAGE_STATE_DELETED)) {
      Bump(it->second.info.state(), -1);
      entries_.erase(it);
    }
    submitted_.pop_front();
  }
}

void MessageTable::Track(const std::string& key, v1::MessageState state,
                         const v1::Envelope& envelope, uint64_t size,
                         const std::string& what) {
  absl::MutexLock lock(&mu_);
  auto [it, fresh] = entries_.try_emplace(key);
  Entry& e = it->second;
  if (!fresh) Bump(e.info.state(), -1);
  Bump(state, 1);
  e.order = next_order_++;
  if (state != v1::MESSAGE_STATE_RECEIVING) e.info.set_queue_id(key);
  e.info.set_state(state);
  *e.info.mutable_envelope() = envelope;
  e.info.set_size(size);
  AddHistoryLocked(e, what);
}

void MessageTable::SetState(const std::string& key, v1::MessageState state,
                            const std::string& what,
                            const std::string& reason) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  Bump(e.info.state(), -1);
  Bump(state, 1);
  e.info.set_state(state);
  e.info.set_reason(reason);
  AddHistoryLocked(e, what);
  if (state == v1::MESSAGE_STATE_SUBMITTED ||
      state == v1::MESSAGE_STATE_DELETED) {
    submitted_.push_back(key);
    TrimSubmittedLocked();
  }
}

void MessageTable::SetEnvelope(const std::string& key,
                               const v1::Envelope& envelope, uint64_t size) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  *it->second.info.mutable_envelope() = envelope;
  it->second.info.set_size(size);
}

void MessageTable::Note(const std::string& key, const std::string& what) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it != entries_.end()) AddHistoryLocked(it->second, what);
}

void MessageTable::Forget(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Bump(it->second.info.state(), -1);
  entries_.erase(it);
}

std::optional<v1::MessageState> MessageTable::State(
    const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second.info.state();
}

std::vector<v1::MessageInfo> MessageTable::List(v1::MessageState state) const {
  std::vector<const Entry*> found;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, e] : entries_) {
    if (state == v1::MESSAGE_STATE_UNSPECIFIED || e.info.state() == state) {
      found.push_back(&e);
    }
  }
  std::sort(found.begin(), found.end(),
            [](const Entry* a, const Entry* b) { return a->order < b->order; });
  std::vector<v1::MessageInfo> out;
  out.reserve(found.size());
  for (const Entry* e : found) out.push_back(e->info);
  return out;
}

std::optional<v1::MessageInfo> MessageTable::Get(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second.info;
}

std::map<v1::MessageState, size_t> MessageTable::CountByState() const {
  std::map<v1::MessageState, size_t> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, e] : entries_) ++out[e.info.state()];
  return out;
}

}  // namespace sinkline::broker
