// sinkline-test-fault-sink: a sink that misbehaves on purpose, for the
// failure-policy tests. Modes:
//   ok       continue
//   hang     sleep --hang-ms, then continue (past the binding's deadline)
//   invalid  answer with an invalid verdict (enhanced code of the wrong class)
//   crash    exit the process in the middle of the call
//   consume  consume the event with 250 2.0.0 (the native handler is skipped)
//   refuse   refuse with 554 5.7.1 (at CONNECT: the session is refused)
// It logs "call <binding>" when a call arrives, so a test can kill it
// mid-call.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "sinkline/sdk/sink.h"

ABSL_FLAG(std::string, mode, "ok",
          "ok | hang | invalid | crash | consume | refuse");
ABSL_FLAG(int, hang_ms, 30000, "how long hang mode sleeps");

namespace {

class FaultSink : public sinkline::sdk::Sink {
 public:
  FaultSink(std::string mode, int hang_ms)
      : mode_(std::move(mode)), hang_ms_(hang_ms) {}

  void OnConnect(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnHelo(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnMail(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnRcpt(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnEod(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnOther(sinkline::sdk::EventContext& ctx) override { Act(ctx); }

 private:
  void Act(sinkline::sdk::EventContext& ctx) {
    spdlog::info("call {}", ctx.binding());
    spdlog::default_logger()->flush();
    if (mode_ == "hang") {
      std::this_thread::sleep_for(std::chrono::milliseconds(hang_ms_));
    } else if (mode_ == "invalid") {
      ctx.Consume(250, "5.0.0", "a 2xx reply with a 5.x.x code");
    } else if (mode_ == "refuse") {
      ctx.Reject(554, "5.7.1", "Refused by the fault sink");
    } else if (mode_ == "consume") {
      ctx.Consume(250, "2.0.0", "Taken by the fault sink");
    } else if (mode_ == "crash") {
      ::_exit(3);
    }
  }

  const std::string mode_;
  const int hang_ms_;
};

}  // namespace

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "fault");
  FaultSink sink(absl::GetFlag(FLAGS_mode), absl::GetFlag(FLAGS_hang_ms));
  return sinkline::sdk::Serve(sink);
}
