// The milter bridge as a Sinkline sink. Bound to EOD only, each transaction
// is replayed whole on a pooled connection; bound per command (CONNECT, HELO,
// MAIL, RCPT, EOD, and DISCONNECT to end sessions promptly), one milter
// connection follows the SMTP session, which needs the binding's
// session_affinity so that one replica sees all of a session's events.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sinkline/sdk/sink.h"
#include "sinks/milter/milter_connection.h"
#include "sinks/milter/milter_replay.h"
#include "sinks/milter/milter_session.h"

namespace sinkline::milter {

struct MilterSinkOptions {
  PoolOptions pool;
  SessionTimeouts timeouts;
  MacroConfig macros = MacroConfig::Defaults();
  bool per_command = false;
  // A per-command session not heard of for this long is ended.
  std::chrono::milliseconds session_idle{10 * 60 * 1000};
  // SMFIR_PROGRESS renews the lease by this much (within its maximum).
  std::chrono::milliseconds progress_extend{30000};
};

class MilterSink final : public sdk::Sink {
 public:
  explicit MilterSink(MilterSinkOptions options)
      : options_(std::move(options)), pool_(options_.pool) {}

  void OnConnect(sdk::EventContext& ctx) override { Handle(ctx); }
  void OnHelo(sdk::EventContext& ctx) override { Handle(ctx); }
  void OnMail(sdk::EventContext& ctx) override { Handle(ctx); }
  void OnRcpt(sdk::EventContext& ctx) override { Handle(ctx); }
  void OnData(sdk::EventContext&) override {}  // DATA is sent at EOD
  void OnEod(sdk::EventContext& ctx) override { Handle(ctx); }
  void OnOther(sdk::EventContext& ctx) override;

  Pool& pool() { return pool_; }
  size_t sessions() const;

 private:
  void Handle(sdk::EventContext& ctx);
  // Runs the steps of `ctx`'s event on `state`; throws on failure so that
  // the binding's failure policy applies.
  void Run(SessionState& state, sdk::EventContext& ctx);
  std::shared_ptr<SessionState> Find(const std::string& session_id,
                                     bool create);
  void End(const std::string& session_id);
  void Sweep();

  const MilterSinkOptions options_;
  Pool pool_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<SessionState>> sessions_;
  Clock::time_point last_sweep_ = Clock::now();
};

}  // namespace sinkline::milter
