#include "sink_broker/submission.h"

#include <spdlog/spdlog.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/time_util.h"
#include "sink_broker/delivery_state.h"
#include "sink_broker/dsn.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {

namespace asio = boost::asio;
using google::protobuf::util::TimeUtil;

namespace {

Counter& MessagesCounter(const std::string& what) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_messages_total",
      "Messages by what happened to them (committed, submitted, "
      "quarantined).",
      {{"what", what}});
}

}  // namespace

// One message on its way to the backend, retried while the backend defers.
class Submitter::Attempt : public std::enable_shared_from_this<Attempt> {
 public:
  Attempt(Submitter* s, v1::QueueEntry entry,
          std::shared_ptr<MessageRecord> record, std::shared_ptr<void> slot)
      : s_(s),
        entry_(std::move(entry)),
        record_(std::move(record)),
        slot_(std::move(slot)),
        timer_(std::make_shared<asio::steady_timer>(s->timers_)),
        recipients_(entry_.envelope().recipients_size()),
        tracker_(s->spool_, entry_) {
    // Refusals an earlier run recorded are still to be reported.
    for (const auto& f : tracker_.Failed()) {
      refused_.push_back(f.recipient);
      refusals_.push_back(
          absl::StrCat("<", f.recipient.address(), ">: ", f.reply));
    }
  }

  // On the submission threads (chains never wait for the backend). The
  // attempt counts as in progress (Join waits for it) until its result is
  // handled.
  void Start() {
    auto self = shared_from_this();
    auto going = s_->AttemptGoing();
    asio::post(s_->pool_, [self, going] { self->Try(going); });
  }

 private:
  void Try(const std::shared_ptr<void>& going) {
    // The in-flight slot goes with the first attempt, whatever its end.
    auto slot = std::move(slot_);
    // Held until the backend's result is recorded: no operator action
    // lands in the middle of the attempt.
    struct Turn {
      OperatorActions::Attempt attempt;
    };
    std::shared_ptr<const Turn> attempt(
        new Turn{s_->operator_.BeginAttempt(entry_.queue_id())});
    if (!attempt->attempt) {  // held or deleted by an operator meanwhile
      if (record_) s_->leases_.MessageReleased(*record_);
      return;
    }
    // THE INVARIANT: nothing goes to the queue while a lease is active.
    const int active = record_ ? record_->active_leases() : 0;
    if (active != 0) {
      MetricsRegistry::Default()
          .GetCounter("sinkline_broker_invariant_violations_total",
                      "Submissions attempted while a lease was active.")
          .Inc();
      spdlog::critical("queue_id={} has {} active leases at submission",
                       entry_.queue_id(), active);
      std::abort();
    }
    SINKLINE_FAILPOINT("submit.before_backend");
    // The backend answers on its own thread (the relay's I/O thread) or at
    // once; what follows writes to the spool, so it goes back to the
    // submission threads (at once when already on one).
    auto self = shared_from_this();
    s_->backend_.SubmitAsync(
        entry_, s_->spool_.ContentPath(entry_.queue_id()),
        [self, going, slot, attempt](absl::StatusOr<SubmitOutcome> result) {
          asio::dispatch(self->s_->pool_,
                         [self, going, slot, attempt,
                          result = std::move(result)]() mutable {
                           self->Finish(std::move(result));
                         });
        });
  }

  void Finish(absl::StatusOr<SubmitOutcome> result) {
    SINKLINE_FAILPOINT("submit.after_backend");
    // Per recipient, durably, before the envelope record changes.
    if (auto st = tracker_.Record(entry_.envelope(), result); !st.ok()) {
      spdlog::error("queue_id={} delivery state: {}", entry_.queue_id(),
                    st.ToString());
    }
    if (!result.ok()) {
      if (result.status().code() == absl::StatusCode::kFailedPrecondition) {
        return Fail(std::string(result.status().message()));
      }
      return Defer(std::string(result.status().message()));
    }
    for (auto& r : result->refusals) refusals_.push_back(std::move(r));
    for (auto& r : result->refused) refused_.push_back(std::move(r));
    if (!result->deferred.empty()) {
      // Only the deferred recipients are tried again, also after a restart.
      if (result->deferred.size() !=
          static_cast<size_t>(entry_.envelope().recipients_size())) {
        auto* rcpts = entry_.mutable_envelope()->mutable_recipients();
        rcpts->Clear();
        for (auto& r : result->deferred) *rcpts->Add() = std::move(r);
        PersistEnvelope();
      }
      return Defer(result->deferred_reason);
    }
    if (!refusals_.empty()) {
      // What stays for an operator is what was refused; the rest went.
      auto* rcpts = entry_.mutable_envelope()->mutable_recipients();
      rcpts->Clear();
      for (const auto& r : refused_) *rcpts->Add() = r;
      PersistEnvelope();
      return Fail(absl::StrCat(
          refusals_.size(), " of ", recipients_,
          " recipients refused: ", absl::StrJoin(refusals_, "; ")));
    }
    Done(0);  // no lease was active when the attempt began
  }

  void Done(int active) {
    SINKLINE_FAILPOINT("submit.before_mark");
    s_->spool_.RemoveCommitted(entry_.queue_id());
    tracker_.Remove();
    SINKLINE_FAILPOINT("submit.after_mark");
    if (record_) s_->leases_.MessageReleased(*record_);
    MessagesCounter("submitted").Inc();
    if (entry_.has_committed()) {
      const auto since = sinkline::NowTimestamp() - entry_.committed();
      MetricsRegistry::Default()
          .GetHistogram("sinkline_broker_commit_to_submit_seconds",
                        "Time from COMMIT to the queue backend taking the "
                        "message.")
          .Observe(TimeUtil::DurationToMicroseconds(since) / 1e6);
    }
    const std::string to = s_->backend_.Describe();
    s_->messages_.SetState(entry_.queue_id(), v1::MESSAGE_STATE_SUBMITTED,
                           absl::StrCat("submitted to ", to));
    spdlog::info(
        "submitted queue_id={} recipients={} size={} active_leases={} to={}",
        entry_.queue_id(), entry_.envelope().recipients_size(), entry_.size(),
        active, to);
  }

  void Defer(const std::string& reason) {
    const auto& opts = s_->options_;
    if (entry_.has_committed()) {
      const auto age = TimeUtil::DurationToMilliseconds(
          sinkline::NowTimestamp() - entry_.committed());
      if (age > opts.max_queue_age.count()) {
        tracker_.Expire(absl::StrCat("delivery time expired after ", age / 1000,
                                     " s in the queue"));
        return Fail(absl::StrCat("gave up after ", age / 1000,
                                 " s in the queue: ", reason));
      }
    }
    delay_ = delay_.count() == 0 ? opts.retry_min
                                 : std::min(delay_ * 2, opts.retry_max);
    MessagesCounter("deferred").Inc();
    s_->messages_.SetState(
        entry_.queue_id(), v1::MESSAGE_STATE_RELEASING,
        absl::StrCat("deferred, retry in ", delay_.count(), " ms: ", reason),
        reason);
    spdlog::warn("deferred queue_id={} retry_in_ms={}: {}", entry_.queue_id(),
                 delay_.count(), reason);
    timer_->expires_after(delay_);
    if (!s_->AddRetryTimer(timer_)) return;  // stays in the spool
    auto self = shared_from_this();
    timer_->async_wait([self](const boost::system::error_code& ec) {
      self->s_->RemoveRetryTimer(self->timer_.get());
      if (!ec) self->Start();
    });
  }

  // Refused for good: the message moves to the spool's failed/ with its
  // reason, and operators see it through the admin service.
  void Fail(const std::string& reason) {
    const std::string& id = entry_.queue_id();
    if (auto st = s_->spool_.MoveToFailed(id, reason); !st.ok()) {
      spdlog::error("queue_id={}: cannot move to failed/: {}", id,
                    st.ToString());
    }
    if (record_) s_->leases_.MessageReleased(*record_);
    MessagesCounter("failed").Inc();
    Bounce();
    s_->messages_.SetState(id, v1::MESSAGE_STATE_FAILED, "failed: " + reason,
                           reason);
    spdlog::error("failed queue_id={}: {}", id, reason);
  }

  // RFC 5321 §6.1: the sender hears of recipients that failed for good
  // (dsn.h), through the same backend.
  void Bounce() {
    auto dsn = CommitDsn(
        s_->spool_, entry_, tracker_.Failed(),
        DsnOptions{.max_return_bytes = s_->options_.dsn_max_return_bytes});
    tracker_.Remove();
    if (!dsn.ok()) {
      spdlog::error("queue_id={}: no DSN: {}", entry_.queue_id(),
                    dsn.status().ToString());
      return;
    }
    if (!*dsn) return;
    const std::string& id = (*dsn)->queue_id();
    s_->messages_.Track(
        id, v1::MESSAGE_STATE_RELEASING, (*dsn)->envelope(), (*dsn)->size(),
        "delivery status notification for " + entry_.queue_id());
    s_->messages_.Note(
        entry_.queue_id(),
        absl::StrCat("DSN ", id, " to <", entry_.envelope().mail_from(), ">"));
    spdlog::info("queue_id={}: DSN queue_id={} to <{}>", entry_.queue_id(), id,
                 entry_.envelope().mail_from());
    s_->Submit(std::move(**dsn));
  }

  void PersistEnvelope() {
    if (auto st = s_->spool_.WriteEnvelope(entry_); !st.ok()) {
      spdlog::error("envelope record: {}", st.ToString());
    }
    s_->messages_.SetEnvelope(entry_.queue_id(), entry_.envelope(),
                              entry_.size());
  }

  Submitter* const s_;
  v1::QueueEntry entry_;
  std::shared_ptr<MessageRecord> record_;
  std::shared_ptr<void> slot_;
  std::shared_ptr<asio::steady_timer> timer_;
  const int recipients_;
  std::vector<std::string> refusals_;
  std::vector<v1::Recipient> refused_;
  DeliveryTracker tracker_;
  std::chrono::milliseconds delay_{0};
};

Submitter::Submitter(SubmitOptions options, QueueBackend& backend,
                     const Spool& spool, MessageTable& messages,
                     LeaseTable& leases, asio::thread_pool& timers)
    : options_(options),
      backend_(backend),
      spool_(spool),
      messages_(messages),
      leases_(leases),
      timers_(timers),
      operator_(spool, messages),
      pool_(std::max(1, options.workers)) {}

Submitter::~Submitter() {
  CancelRetries();
  Join();
}

void Submitter::Submit(v1::QueueEntry entry,
                       std::shared_ptr<MessageRecord> record,
                       std::shared_ptr<void> slot) {
  std::make_shared<Attempt>(this, std::move(entry), std::move(record),
                            std::move(slot))
      ->Start();
}

void Submitter::ChainOver(std::shared_ptr<v1::QueueEntry> committed,
                          std::shared_ptr<MessageRecord> record,
                          std::string quarantine, std::shared_ptr<void> slot) {
  record->ChainDone([this, committed, record, quarantine,
                     slot = std::move(slot)]() mutable {
    const std::string& id = committed->queue_id();
    std::error_code ec;
    const auto size = std::filesystem::file_size(record->path(), ec);
    if (!ec) committed->set_size(size);
    if (record->envelope_edited()) {
      *committed->mutable_envelope() = record->envelope();
      // Keep the spool's record in step with the envelope that goes out.
      SINKLINE_FAILPOINT("envelope.before_rewrite");
      if (auto st = spool_.WriteEnvelope(*committed); !st.ok()) {
        spdlog::error("envelope record: {}", st.ToString());
      }
      SINKLINE_FAILPOINT("envelope.after_rewrite");
    }
    messages_.SetEnvelope(id, committed->envelope(), committed->size());
    auto hold = [&](v1::MessageState state, const char* what,
                    const std::string& reason) {
      MessagesCounter(what).Inc();
      if (auto st = spool_.WriteHold(id, state, reason); !st.ok()) {
        spdlog::error("hold record: {}", st.ToString());
      }
      messages_.SetState(id, state, absl::StrCat(what, ": ", reason), reason);
      spdlog::warn("{} queue_id={}: {}", what, id, reason);
    };
    if (!quarantine.empty()) {
      slot.reset();
      return hold(v1::MESSAGE_STATE_QUARANTINED, "quarantined", quarantine);
    }
    if (record->held()) {
      slot.reset();
      return hold(v1::MESSAGE_STATE_HELD, "held",
                  "a lease expired under the hold policy; an operator must "
                  "release it");
    }
    messages_.SetState(id, v1::MESSAGE_STATE_RELEASING,
                       "chain over, no lease active");
    Submit(*committed, record, std::move(slot));
  });
}

absl::Status Submitter::Release(const std::string& queue_id,
                                const std::function<void()>& released) {
  absl::MutexLock lock(&operator_.release_mu());
  const auto state = messages_.State(queue_id);
  if (!state || queue_id.empty()) {
    return absl::NotFoundError("no message with queue id " + queue_id);
  }
  switch (*state) {
    case v1::MESSAGE_STATE_HELD:
    case v1::MESSAGE_STATE_QUARANTINED:
      break;
    case v1::MESSAGE_STATE_FAILED:
      if (auto st = spool_.RestoreFailed(queue_id); !st.ok()) return st;
      break;
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("message ", queue_id, " is ", MessageStateName(*state),
                       "; only held, quarantined or failed messages can be "
                       "released"));
  }
  auto entry = spool_.ReadEnvelope(queue_id);
  if (!entry.ok()) return entry.status();
  spool_.RemoveHold(queue_id);
  messages_.SetState(queue_id, v1::MESSAGE_STATE_RELEASING,
                     "released by an operator");
  spdlog::info("queue_id={} released by an operator (was {})", queue_id,
               MessageStateName(*state));
  if (released) released();
  Submit(std::move(*entry));
  return absl::OkStatus();
}

bool Submitter::AddRetryTimer(const std::shared_ptr<asio::steady_timer>& t) {
  absl::MutexLock lock(&retry_mu_);
  if (draining_) return false;
  retry_timers_[t.get()] = t;
  return true;
}

void Submitter::RemoveRetryTimer(asio::steady_timer* t) {
  absl::MutexLock lock(&retry_mu_);
  retry_timers_.erase(t);
}

void Submitter::CancelRetries() {
  absl::MutexLock lock(&retry_mu_);
  draining_ = true;
  for (auto& [raw, weak] : retry_timers_) {
    if (auto t = weak.lock()) asio::post(timers_, [t] { t->cancel(); });
  }
}

std::shared_ptr<void> Submitter::AttemptGoing() {
  {
    absl::MutexLock lock(&attempts_mu_);
    ++attempts_;
  }
  return std::shared_ptr<void>(nullptr, [this](void*) {
    absl::MutexLock lock(&attempts_mu_);
    --attempts_;
  });
}

void Submitter::Join() {
  {
    // Attempts whose backend has not answered yet hold no submission
    // thread: wait for them first.
    absl::MutexLock lock(&attempts_mu_);
    attempts_mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &attempts_));
  }
  pool_.join();
}

}  // namespace sinkline::broker
