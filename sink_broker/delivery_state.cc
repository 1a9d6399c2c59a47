#include "sink_broker/delivery_state.h"

#include <spdlog/spdlog.h>

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace {

const char* ResultName(RecipientResult r) {
  switch (r) {
    case RecipientResult::kDelivered:
      return "delivered";
    case RecipientResult::kDeferred:
      return "deferred";
    case RecipientResult::kFailed:
      return "failed";
  }
  return "?";
}

// "<a@b>: 550 ..." (the relay's refusal) -> "550 ...".
std::string ReplyOf(const std::string& refusal, const std::string& address) {
  const std::string prefix = absl::StrCat("<", address, ">: ");
  if (absl::StartsWith(refusal, prefix)) return refusal.substr(prefix.size());
  return refusal;
}

// Messages whose last attempt deferred someone, by queue id: their COMMIT
// time (unix seconds).
class DeferredMessages {
 public:
  static DeferredMessages& Get() {
    static auto* d = new DeferredMessages;
    return *d;
  }
  void Set(const std::string& id, int64_t committed_s, bool deferred) {
    absl::MutexLock lock(&mu_);
    if (deferred) {
      by_id_[id] = committed_s;
    } else if (by_id_.erase(id) == 0) {
      return;
    }
    int64_t oldest = 0;
    for (const auto& [_, t] : by_id_) {
      if (oldest == 0 || t < oldest) oldest = t;
    }
    auto& m = MetricsRegistry::Default();
    m.GetGauge("sinkline_broker_deferred_messages",
               "Messages whose last attempt left recipients deferred.")
        .Set(by_id_.size());
    m.GetGauge("sinkline_broker_oldest_deferred_commit_timestamp_seconds",
               "COMMIT time (unix seconds) of the oldest deferred message; "
               "0 when none. Its age is now minus this.")
        .Set(oldest);
    m.GetGauge("sinkline_broker_oldest_deferred_age_seconds",
               "Age of the oldest deferred message when a deferral last "
               "began or ended; 0 when none.")
        .Set(oldest == 0 ? 0 : absl::ToUnixSeconds(absl::Now()) - oldest);
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int64_t> by_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::string FormatDeliveryState(const std::vector<RecipientRecord>& records) {
  std::string out;
  for (const auto& r : records) {
    std::vector<std::string> params;
    for (const auto& p : r.recipient.params()) {
      params.push_back(absl::StrCat(p.key(), "=", p.value()));
    }
    absl::StrAppend(&out, ResultName(r.result), "\t",
                    absl::CEscape(r.recipient.address()), "\t",
                    absl::CEscape(r.reply), "\t",
                    absl::CEscape(absl::StrJoin(params, " ")), "\n");
  }
  return out;
}

absl::StatusOr<std::vector<RecipientRecord>> ParseDeliveryState(
    const std::string& text) {
  std::vector<RecipientRecord> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    RecipientRecord r;
    std::string address, params;
    if (f.size() != 4 || !absl::CUnescape(f[1], &address) ||
        !absl::CUnescape(f[2], &r.reply) || !absl::CUnescape(f[3], &params)) {
      return absl::DataLossError(absl::StrCat(
          "delivery state: bad line: ", absl::CEscape(line.substr(0, 200))));
    }
    if (f[0] == "delivered") {
      r.result = RecipientResult::kDelivered;
    } else if (f[0] == "deferred") {
      r.result = RecipientResult::kDeferred;
    } else if (f[0] == "failed") {
      r.result = RecipientResult::kFailed;
    } else {
      return absl::DataLossError("delivery state: bad result " + f[0]);
    }
    r.recipient.set_address(address);
    for (absl::string_view kv :
         absl::StrSplit(params, ' ', absl::SkipEmpty())) {
      auto* p = r.recipient.add_params();
      const auto eq = kv.find('=');
      p->set_key(std::string(kv.substr(0, eq)));
      if (eq != absl::string_view::npos) {
        p->set_value(std::string(kv.substr(eq + 1)));
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

DeliveryTracker::DeliveryTracker(const Spool& spool,
                                 const v1::QueueEntry& entry)
    : queue_id_(entry.queue_id()),
      committed_s_(entry.has_committed() ? entry.committed().seconds()
                                         : absl::ToUnixSeconds(absl::Now())),
      spool_(spool) {
  const auto text = spool.ReadDeliveryState(queue_id_);
  if (!text) return;
  auto records = ParseDeliveryState(*text);
  if (records.ok()) {
    records_ = std::move(*records);
  } else {
    spdlog::error("queue_id={}: {}", queue_id_, records.status().ToString());
  }
}

DeliveryTracker::~DeliveryTracker() { SetDeferred(false); }

void DeliveryTracker::SetDeferred(bool deferred) const {
  DeferredMessages::Get().Set(queue_id_, committed_s_, deferred);
}

RecipientRecord& DeliveryTracker::Find(const v1::Recipient& r) {
  for (auto& rec : records_) {
    if (rec.recipient.address() == r.address()) return rec;
  }
  records_.push_back({r, RecipientResult::kDeferred, ""});
  return records_.back();
}

absl::Status DeliveryTracker::Record(
    const v1::Envelope& tried, const absl::StatusOr<SubmitOutcome>& result) {
  for (const auto& r : tried.recipients()) {
    auto& rec = Find(r);
    rec.recipient = r;
    if (!result.ok()) {
      rec.result =
          result.status().code() == absl::StatusCode::kFailedPrecondition
              ? RecipientResult::kFailed
              : RecipientResult::kDeferred;
      rec.reply = std::string(result.status().message());
      continue;
    }
    rec.result = RecipientResult::kDelivered;
    rec.reply = "";
    for (size_t i = 0; i < result->refused.size(); ++i) {
      if (result->refused[i].address() != r.address()) continue;
      rec.result = RecipientResult::kFailed;
      rec.reply = i < result->refusals.size()
                      ? ReplyOf(result->refusals[i], r.address())
                      : "refused";
    }
    for (size_t i = 0; i < result->deferred.size(); ++i) {
      if (result->deferred[i].address() != r.address()) continue;
      rec.result = RecipientResult::kDeferred;
      rec.reply = i < result->deferrals.size() ? result->deferrals[i]
                                               : result->deferred_reason;
    }
  }
  bool deferred = false;
  for (const auto& rec : records_) {
    deferred = deferred || rec.result == RecipientResult::kDeferred;
  }
  SetDeferred(deferred);
  // Without a deferral the message is done at once (submitted, or failed
  // with its DSN): nothing is left to remember across a restart, so the
  // common case costs no write.
  if (!deferred) return absl::OkStatus();
  return spool_.WriteDeliveryState(queue_id_, FormatDeliveryState(records_));
}

void DeliveryTracker::Expire(const std::string& why) {
  for (auto& rec : records_) {
    if (rec.result != RecipientResult::kDeferred) continue;
    rec.result = RecipientResult::kFailed;
    rec.reply = absl::StrCat(why, rec.reply.empty() ? "" : ": ", rec.reply);
  }
}

std::vector<RecipientRecord> DeliveryTracker::Failed() const {
  std::vector<RecipientRecord> out;
  for (const auto& rec : records_) {
    if (rec.result == RecipientResult::kFailed) out.push_back(rec);
  }
  return out;
}

void DeliveryTracker::Remove() const { SetDeferred(false); }

}  // namespace sinkline::broker
