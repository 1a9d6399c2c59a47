#include "sinks/milter/milter_sink.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "sinkline/common/metrics.h"
#include "sinkline/sdk/content.h"
#include "sinks/milter/milter_verdict.h"

namespace sinkline::milter {
namespace {

using google::protobuf::util::TimeUtil;

void Count(absl::string_view result) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_milter_calls_total",
                  "Milter bridge calls, by result.",
                  {{"result", std::string(result)}})
      .Inc();
}

std::string ResultName(const StepResult& r) {
  if (r.step == Step::kNone || r.outcome.skipped) return "continue";
  switch (r.outcome.final.kind) {
    case Reply::Kind::kContinue:
    case Reply::Kind::kSkip:
      return "continue";
    case Reply::Kind::kAccept:
      return "accept";
    case Reply::Kind::kReject:
    case Reply::Kind::kReplyCode:
      return "reject";
    case Reply::Kind::kTempfail:
      return "tempfail";
    case Reply::Kind::kDiscard:
      return "discard";
    default:
      return "shutdown";
  }
}

}  // namespace

size_t MilterSink::sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_.size();
}

std::shared_ptr<SessionState> MilterSink::Find(const std::string& session_id,
                                               bool create) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(session_id);
  if (it != sessions_.end()) return it->second;
  if (!create) return nullptr;
  auto state = std::make_shared<SessionState>();
  sessions_[session_id] = state;
  return state;
}

void MilterSink::End(const std::string& session_id) {
  std::shared_ptr<SessionState> state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end()) return;
    state = std::move(it->second);
    sessions_.erase(it);
  }
  std::lock_guard<std::mutex> lock(state->mu);
  if (state->milter) {
    const bool healthy = !state->milter->broken();
    pool_.Release(state->milter->Take(), healthy);
    state->milter.reset();
  }
}

void MilterSink::Sweep() {
  std::vector<std::string> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    if (now - last_sweep_ < std::chrono::seconds(10)) return;
    last_sweep_ = now;
    for (const auto& [id, state] : sessions_) {
      std::unique_lock<std::mutex> l(state->mu, std::try_to_lock);
      if (l.owns_lock() && now - state->last_used > options_.session_idle) {
        old.push_back(id);
      }
    }
  }
  for (const auto& id : old) End(id);
}

void MilterSink::OnOther(sdk::EventContext& ctx) {
  if (!options_.per_command) return;
  const auto type = ctx.event().type();
  const std::string& id = ctx.session().session_id();
  if (type == v1::EVENT_TYPE_DISCONNECT || type == v1::EVENT_TYPE_QUIT) {
    End(id);
  } else if (type == v1::EVENT_TYPE_RSET) {
    if (auto state = Find(id, false)) {
      std::lock_guard<std::mutex> lock(state->mu);
      if (state->milter && !state->transaction.empty()) {
        (void)state->milter->Abort();
        state->transaction.clear();
      }
    }
  }
}

void MilterSink::Handle(sdk::EventContext& ctx) {
  const bool eod = ctx.event().type() == v1::EVENT_TYPE_EOD;
  if (!options_.per_command) {
    // Replay mode: only EOD speaks to the milter, on a state of its own.
    if (!eod) return;
    SessionState state;
    Run(state, ctx);
    return;
  }
  Sweep();
  const std::string& id = ctx.session().session_id();
  auto state = Find(id, true);
  std::lock_guard<std::mutex> lock(state->mu);
  state->last_used = Clock::now();
  try {
    Run(*state, ctx);
  } catch (...) {
    // A failed step leaves the milter in an unknown state: start again.
    state->milter.reset();
    state->connected = false;
    state->helo_sent = false;
    state->transaction.clear();
    state->rcpts_sent.clear();
    throw;
  }
}

void MilterSink::Run(SessionState& state, sdk::EventContext& ctx) {
  const bool eod = ctx.event().type() == v1::EVENT_TYPE_EOD;
  std::string message;
  if (eod) {
    auto m = sdk::ReadMessage(ctx);
    if (!m.ok()) {
      Count("error");
      throw std::runtime_error(
          absl::StrCat("reading the message: ", m.status().ToString()));
    }
    message = std::move(*m);
  }
  // The broker stops waiting at the call's deadline (the binding's
  // deadline_ms): no milter answer is waited for past it.
  const auto call_left = ctx.deadline() - std::chrono::system_clock::now();
  const Clock::time_point call_end =
      call_left > std::chrono::hours(24)
          ? Clock::now() + std::chrono::hours(24)
          : Clock::now() + std::chrono::duration_cast<Clock::duration>(
                               std::max(call_left, call_left.zero()));
  // SMFIR_PROGRESS: renew the lease and push the deadline out by
  // --eom-timeout, never past the lease's maximum nor the call's deadline.
  auto progress = [&](Clock::time_point) {
    Clock::time_point next =
        std::min(Clock::now() + options_.timeouts.eom, call_end);
    if (!ctx.lease().token().empty()) {
      (void)sdk::ContentClient::Default().Renew(
          sdk::ClaimedLease(ctx), absl::FromChrono(options_.progress_extend));
      const auto max_left = std::chrono::milliseconds(
          TimeUtil::TimestampToMilliseconds(ctx.lease().max_expires()) -
          TimeUtil::TimestampToMilliseconds(TimeUtil::GetCurrentTime()));
      next = std::min(next, Clock::now() + max_left);
    }
    MetricsRegistry::Default()
        .GetCounter("sinkline_milter_progress_total",
                    "SMFIR_PROGRESS answers that extended a deadline.")
        .Inc();
    return next;
  };
  const bool fresh = state.milter == nullptr;
  for (int attempt = 0;; ++attempt) {
    if (!state.milter) {
      auto conn = pool_.Acquire();
      if (!conn.ok()) {
        Count("error");
        throw std::runtime_error(std::string(conn.status().message()));
      }
      state.milter =
          std::make_unique<MilterSession>(std::move(*conn), options_.timeouts);
      state.connected = false;
      state.helo_sent = false;
      state.transaction.clear();
      state.rcpts_sent.clear();
    }
    const bool reused = fresh && attempt == 0 && state.milter->reused();
    BodyStream body(ctx, state.milter->options().actions);
    auto result =
        CatchUp(state, ctx.event(), options_.macros, message, progress,
                [&body](absl::string_view chunk) { return body.Write(chunk); });
    if (!result.ok()) {
      const bool retry = reused && absl::IsUnavailable(result.status());
      pool_.Release(state.milter->Take(), false);
      state.milter.reset();
      if (retry) continue;  // an idle pooled connection the milter dropped
      Count("error");
      throw std::runtime_error(std::string(result.status().message()));
    }
    if (!result->outcome.skipped &&
        result->outcome.final.kind == Reply::Kind::kDiscard) {
      state.discard = true;
    }
    if (auto s = ApplyResult(*result, state.discard, state.milter->options(),
                             ctx, &body);
        !s.ok()) {
      pool_.Release(state.milter->Take(), false);
      state.milter.reset();
      Count("error");
      throw std::runtime_error(std::string(s.message()));
    }
    Count(ResultName(*result));
    const auto kind = result->outcome.final.kind;
    const bool closing =
        !result->outcome.skipped && result->step != Step::kNone &&
        (kind == Reply::Kind::kShutdown || kind == Reply::Kind::kConnFail);
    if (!options_.per_command || closing) {
      // The transaction is over: the connection goes back to the pool.
      const bool healthy = !state.milter->broken() && !closing;
      pool_.Release(state.milter->Take(), healthy);
      state.milter.reset();
    }
    return;
  }
}

}  // namespace sinkline::milter
