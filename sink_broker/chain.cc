#include "sink_broker/chain.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "sink_broker/affinity.h"
#include "sink_broker/message_edit.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

struct ChainRun::Call {
  const BindingConfig* binding = nullptr;
  std::string token;  // the lease, when the binding has content access
  std::chrono::steady_clock::time_point started;
};

ChainRun::ChainRun(ChainEnv env, Strand strand,
                   std::shared_ptr<const Config> config, v1::Event event)
    : env_(std::move(env)),
      strand_(std::move(strand)),
      config_(std::move(config)),
      event_(std::move(event)) {
  for (const auto* b : config_->ChainFor(event_)) {
    if (!b->rule.Matches(event_)) continue;
    (b->spec.priority() <= kNativePriority ? pre_ : post_).push_back(b);
  }
  reply_ = event_.native_reply();
  envelope_ = event_.envelope();
}

void ChainRun::RecoverAfterCommit(const std::set<std::string>& finished) {
  phase_ = Phase::kPost;
  index_ = 0;
  redelivery_ = true;
  std::vector<const BindingConfig*> left;
  for (const auto* b : post_) {
    if (!finished.count(b->spec.name())) left.push_back(b);
  }
  post_ = std::move(left);
}

void ChainRun::Run(std::function<NativeResult(ChainRun&)> native,
                   std::function<void(ChainRun&)> after_native, Done done) {
  native_ = std::move(native);
  after_native_ = std::move(after_native);
  done_ = std::move(done);
  Step();
}

void ChainRun::Step() {
  if (phase_ == Phase::kPre) {
    if (stopped_ || index_ >= pre_.size()) {
      phase_ = Phase::kNative;
      index_ = 0;
    } else {
      return Invoke(pre_[index_++]);
    }
  }
  if (phase_ == Phase::kNative) {
    bool stop = stopped_;
    if (!stopped_ && native_) stop = native_(*this) == NativeResult::kStop;
    if (after_native_) after_native_(*this);
    phase_ = Phase::kPost;
    if (stop) stopped_ = true;
  }
  if (phase_ == Phase::kPost) {
    if (!stopped_ && index_ < post_.size()) return Invoke(post_[index_++]);
    phase_ = Phase::kDone;
    MetricsRegistry::Default()
        .GetHistogram("sinkline_broker_chain_seconds",
                      "Time of each event's whole chain of sinks, by event.",
                      {{"event", EventName(event_.type())}})
        .Observe(std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - chain_started_)
                     .count());
    if (done_) done_(*this);
  }
}

void ChainRun::Invoke(const BindingConfig* b) {
  if (message && b->spec.content_access() == v1::CONTENT_ACCESS_READ_WRITE) {
    // Writers take turns: wait for a held read-write lease to end.
    auto self = shared_from_this();
    message->WhenNoWriter([self, b] {
      asio::post(self->strand_, [self, b] { self->InvokeNow(b); });
    });
    return;
  }
  InvokeNow(b);
}

void ChainRun::InvokeNow(const BindingConfig* b) {
  const v1::Binding& spec = b->spec;
  const ChainOptions& opts = *env_.options;
  auto call = std::make_shared<Call>();
  call->binding = b;
  call->started = std::chrono::steady_clock::now();
  auto deadline = std::chrono::milliseconds(spec.deadline_ms());
  if (phase_ != Phase::kPost || event_.type() != v1::EVENT_TYPE_EOD) {
    // Before the client's reply the whole chain has a budget.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        chain_started_ + opts.chain_deadline -
        std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Finished(
          call, absl::DeadlineExceededError("the chain's deadline is spent"));
    }
    deadline = std::min(deadline, left);
  }
  if (config_->FindSink(spec.sink()) == nullptr) {
    return Finished(call, absl::NotFoundError("no such sink " + spec.sink()));
  }
  const auto until = std::chrono::system_clock::now() + deadline;
  if (env_.call_limits == nullptr) return StartCall(b, call, until, nullptr);
  // Calls in flight per binding are bounded: wait for a slot up to the
  // call's deadline (sink_calls.h), then it is a deadline miss.
  auto self = shared_from_this();
  env_.call_limits->Acquire(
      *b, strand_, call->started + deadline,
      [self, b, call, until](SinkCallLimits::Slot slot) {
        if (slot) return self->StartCall(b, call, until, std::move(slot));
        const v1::Binding& spec = b->spec;
        self->Finished(
            call,
            absl::DeadlineExceededError(absl::StrCat(
                "no call slot within the deadline: binding ", spec.name(),
                " has ", self->env_.call_limits->LimitOf(b->max_in_flight),
                " calls in flight (max_in_flight, "
                "--max-sink-calls-in-flight)")));
      });
}

void ChainRun::StartCall(const BindingConfig* b,
                         const std::shared_ptr<Call>& call,
                         std::chrono::system_clock::time_point until,
                         SinkCallLimits::Slot slot) {
  const v1::Binding& spec = b->spec;
  const ChainOptions& opts = *env_.options;
  const SinkConfig* sink = config_->FindSink(spec.sink());
  auto req = std::make_shared<v1::SinkRequest>(
      MakeSinkRequest(event_, message ? message->envelope() : envelope_, spec,
                      phase_ == Phase::kPost, redelivery_));
  if (spec.content_access() != v1::CONTENT_ACCESS_NONE && message) {
    const auto ttl = std::chrono::milliseconds(spec.deadline_ms());
    auto lease = env_.leases->Grant(message, spec, ttl, opts.lease_max);
    if (!lease.ok()) {
      return Finished(call, absl::UnavailableError(lease.status().message()));
    }
    call->token = (*lease)->token;
    if (phase_ == Phase::kPost) {
      // A post-COMMIT binding is done when its lease ends normally.
      (*lease)->on_end = [finished = env_.finished,
                          envelope_published = env_.envelope_published,
                          record = message,
                          name = spec.name()](Lease::State how) {
        if (how != Lease::State::kReleased || !finished) return;
        if (record->envelope_edited() && envelope_published) {
          if (auto st =
                  envelope_published(record->queue_id(), record->envelope());
              !st.ok()) {
            spdlog::error(
                "queue_id={}: envelope edits of binding {} not durable, it "
                "runs again after a restart: {}",
                record->queue_id(), name, st.ToString());
            return;
          }
        }
        finished(record->queue_id(), name);
      };
    }
    AttachLease(**lease, opts.advertise, opts.inline_max_bytes, *req);
  }
  // With session affinity every event of a session goes to one replica.
  SinkConfig to = *sink;
  if (spec.session_affinity()) {
    to.target = AffinityTarget(sink->target, event_.session().session_id());
  }
  auto self = shared_from_this();
  // Without a limit table (tests) the calls are still counted.
  Gauge* counted = nullptr;
  if (!slot) {
    counted = &MetricsRegistry::Default().GetGauge(
        "sinkline_sink_calls_in_flight", "Sink calls under way, by binding.",
        {{"binding", spec.name()}});
    counted->Add(1);
  }
  env_.sinks->Invoke(
      to, std::move(req), until,
      [self, call, counted,
       slot = std::move(slot)](absl::StatusOr<v1::Verdict> result) mutable {
        if (counted) counted->Add(-1);
        slot.reset();  // the binding's slot is free once the sink answered
        asio::post(self->strand_,
                   [self, call, result = std::move(result)]() mutable {
                     self->Finished(call, std::move(result));
                   });
      });
}

void ChainRun::Finished(const std::shared_ptr<Call>& call,
                        absl::StatusOr<v1::Verdict> result) {
  const v1::Binding& spec = call->binding->spec;
  LeaseTable& leases = *env_.leases;
  MetricsRegistry::Default()
      .GetHistogram("sinkline_sink_call_seconds",
                    "Time of each sink call, by binding.",
                    {{"binding", spec.name()}})
      .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             call->started)
                   .count());
  if (!result.ok()) {
    // The lease ends with the failed call; nothing it staged is kept.
    if (!call->token.empty()) leases.Fail(call->token);
    Failure(spec, absl::StrCat(
                      "call failed: ", static_cast<int>(result.status().code()),
                      " ", result.status().message()));
    return Step();
  }
  const v1::Verdict& v = *result;
  const bool post = phase_ == Phase::kPost;
  if (auto st = ValidateVerdict(event_, spec, post, v); !st.ok()) {
    if (!call->token.empty()) leases.Fail(call->token);
    Failure(spec, absl::StrCat("invalid verdict: ", st.message()));
    return Step();
  }
  const bool has_reply = v.has_reply() && v.reply().code() != 0;
  if (post && v.action() == v1::ACTION_CONSUME && has_reply &&
      v.reply().code() >= 400) {
    // The client has its reply: a refusal holds the message instead. The
    // hold is durable before the binding is marked finished below.
    Quarantine(absl::StrCat("binding ", spec.name(), " answered ",
                            v.reply().code(), " after COMMIT"));
  }
  std::vector<v1::ContentEdit> content(v.content_edits().begin(),
                                       v.content_edits().end());
  std::vector<v1::EnvelopeEdit> envelope(v.envelope_edits().begin(),
                                         v.envelope_edits().end());
  if (!call->token.empty()) {
    // The verdict's edits go through the lease: published when it ends.
    if (v.hold_lease()) {
      // All of them or none: edits past the lease's limits end the lease
      // with nothing of it published.
      if (auto st = content.empty() && envelope.empty()
                        ? absl::OkStatus()
                        : leases.Stage(call->token, std::move(content),
                                       std::move(envelope));
          !st.ok()) {
        leases.Fail(call->token);
        Failure(spec, absl::StrCat("edits refused: ", st.message()));
        return Step();
      }
      spdlog::debug("binding={} holds its lease on queue_id={}", spec.name(),
                    event_.queue_id());
    } else if (auto st = leases.Release(call->token, false, content, envelope);
               !st.ok()) {
      Failure(spec, absl::StrCat("edits failed: ", st.message()));
      return Step();
    }
  } else if (ApplyEnvelopeEdits(v.envelope_edits(), envelope_)) {
    envelope_changed_ = true;
  }
  if (post && call->token.empty() && message && env_.finished) {
    env_.finished(message->queue_id(), spec.name());
  }
  spdlog::debug("binding={} sink={} event={} action={}", spec.name(),
                spec.sink(), EventName(event_.type()),
                v1::Action_Name(v.action()));
  if (post) {
    env_.messages->Note(
        event_.queue_id(),
        absl::StrCat("sink ", spec.name(), " ",
                     absl::AsciiStrToLower(absl::StripPrefix(
                         v1::Action_Name(v.action()), "ACTION_")),
                     v.hold_lease() ? " (holds its lease)" : "",
                     redelivery_ ? " (redelivery)" : ""));
    if (v.action() == v1::ACTION_CONSUME) stopped_ = true;
    return Step();
  }
  if (has_reply) {
    reply_ = v.reply();
    sink_replied_ = true;
  }
  if (v.drop_session()) {
    close_ = true;
    if (!has_reply) reply_ = MakeReply(421, "4.7.0", "Closing connection");
  }
  if (v.action() == v1::ACTION_CONSUME) {
    if (event_.type() == v1::EVENT_TYPE_EOD && has_reply &&
        v.reply().code() / 100 == 2) {
      // Only a binding with discard: true gets here (verdict.cc).
      discarded_by_ = spec.name();
      MetricsRegistry::Default()
          .GetCounter("sinkline_broker_messages_total",
                      "Messages by what happened to them (committed, "
                      "submitted, quarantined).",
                      {{"what", "discarded"}})
          .Inc();
      spdlog::warn(
          "binding={} discarded the message of session {} at EOD "
          "before COMMIT ({} {})",
          spec.name(), event_.session().session_id(), v.reply().code(),
          v.reply().lines_size() > 0 ? v.reply().lines(0) : "");
    }
    consumed_ = true;
    stopped_ = true;
  }
  Step();
}

void ChainRun::Failure(const v1::Binding& spec, const std::string& why) {
  const auto policy = spec.failure_policy();
  std::string policy_name = "continue";
  if (policy == v1::FAILURE_POLICY_TEMPFAIL) policy_name = "tempfail";
  if (policy == v1::FAILURE_POLICY_REJECT) policy_name = "reject";
  MetricsRegistry::Default()
      .GetCounter("sinkline_sink_failures_total",
                  "Sink calls that failed, by binding and policy.",
                  {{"binding", spec.name()},
                   {"sink", spec.sink()},
                   {"policy", policy_name}})
      .Inc();
  spdlog::warn("sink failure: binding={} sink={} event={} policy={}: {}",
               spec.name(), spec.sink(), EventName(event_.type()), policy_name,
               why);
  if (phase_ == Phase::kPost) {
    env_.messages->Note(event_.queue_id(),
                        absl::StrCat("sink ", spec.name(), " failed (",
                                     policy_name, "): ", why));
  }
  if (policy == v1::FAILURE_POLICY_CONTINUE) return;
  if (phase_ == Phase::kPost) {
    stopped_ = true;
    Quarantine(absl::StrCat("binding ", spec.name(), " failed after COMMIT (",
                            policy_name, "): ", why));
    return;
  }
  reply_ = policy == v1::FAILURE_POLICY_TEMPFAIL
               ? MakeReply(451, "4.3.0",
                           "Temporary failure in message processing, try "
                           "again later")
               : MakeReply(554, "5.7.0", "Rejected by policy");
  sink_replied_ = true;
  consumed_ = true;
  stopped_ = true;
}

void ChainRun::Quarantine(std::string reason) {
  quarantine_ = std::move(reason);
  if (message && env_.quarantined) {
    env_.quarantined(message->queue_id(), quarantine_);
  }
}

}  // namespace sinkline::broker
