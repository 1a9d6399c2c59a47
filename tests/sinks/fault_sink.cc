// sinkline-test-fault-sink: a sink that misbehaves on purpose, for the
// failure-policy tests. Modes:
//   ok       continue
//   hang     sleep --hang-ms, then continue (past the binding's deadline)
//   invalid  answer with an invalid verdict (enhanced code of the wrong class)
//   crash    exit the process in the middle of the call
//   consume  consume the event with 250 2.0.0 (the native handler is skipped)
//   refuse   refuse with 554 5.7.1 (at CONNECT: the session is refused)
//   garbage  a different wrong answer at each call, in turn: a 2xx reply
//            with a 5.x.x code, a code out of range, a 2xx CONSUME, a reply
//            text with CRLF and a second reply in it, a code below 100, a
//            1 MB header, a 4 MB body, recipients and a sender that are no
//            addresses, a change of a header occurrence that does not exist
// --mode-file, when set, is read at every call and its first word replaces
// --mode (the fault suite switches a running sink to garbage and back).
// It logs "call <binding>" when a call arrives, so a test can kill it
// mid-call.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "sinkline/sdk/sink.h"

ABSL_FLAG(std::string, mode, "ok",
          "ok | hang | invalid | crash | consume | refuse | garbage");
ABSL_FLAG(int, hang_ms, 30000, "how long hang mode sleeps");
ABSL_FLAG(std::string, mode_file, "",
          "file whose first word, read at every call, replaces --mode");

namespace {

class FaultSink : public sinkline::sdk::Sink {
 public:
  FaultSink(std::string mode, int hang_ms, std::string mode_file)
      : mode_(std::move(mode)),
        hang_ms_(hang_ms),
        mode_file_(std::move(mode_file)) {}

  void OnConnect(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnHelo(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnMail(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnRcpt(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnEod(sinkline::sdk::EventContext& ctx) override { Act(ctx); }
  void OnOther(sinkline::sdk::EventContext& ctx) override { Act(ctx); }

 private:
  std::string Mode() const {
    if (mode_file_.empty()) return mode_;
    std::ifstream in(mode_file_);
    std::string word;
    if (in >> word) return word;
    return mode_;
  }

  void Garbage(sinkline::sdk::EventContext& ctx) {
    const unsigned n = calls_.fetch_add(1) % 10;
    spdlog::info("garbage {} for {}", n, ctx.binding());
    switch (n) {
      case 0:
        ctx.Consume(250, "5.0.0", "a 2xx reply with a 5.x.x code");
        break;
      case 1:
        ctx.Consume(999, "9.9.9", "a code out of range");
        break;
      case 2:
        ctx.Consume(250, "2.0.0", "consumed by the garbage sink");
        break;
      case 3:
        ctx.ContinueWithReply(250, "2.0.0", "ok\r\n554 5.7.1 injected");
        break;
      case 4:
        ctx.Consume(42, "", "");
        break;
      case 5:
        ctx.AddHeader("X-Garbage", std::string(1 << 20, 'g'));
        break;
      case 6:
        ctx.ReplaceBody(std::string(4 << 20, 'b'));
        break;
      case 7:
        ctx.AddRecipient("<<not an address>>");
        ctx.SetSender("\r\nRCPT TO:<x@y>");
        break;
      case 8:
        ctx.ChangeHeader("Subject", 1000, "no such occurrence");
        break;
      default:
        ctx.Consume(421, "2.0.0", "a 4xx reply with a 2.x.x code");
        break;
    }
  }

  void Act(sinkline::sdk::EventContext& ctx) {
    spdlog::info("call {}", ctx.binding());
    spdlog::default_logger()->flush();
    const std::string mode = Mode();
    if (mode == "garbage") {
      Garbage(ctx);
    } else if (mode == "hang") {
      std::this_thread::sleep_for(std::chrono::milliseconds(hang_ms_));
    } else if (mode == "invalid") {
      ctx.Consume(250, "5.0.0", "a 2xx reply with a 5.x.x code");
    } else if (mode == "refuse") {
      ctx.Reject(554, "5.7.1", "Refused by the fault sink");
    } else if (mode == "consume") {
      ctx.Consume(250, "2.0.0", "Taken by the fault sink");
    } else if (mode == "crash") {
      ::_exit(3);
    }
  }

  const std::string mode_;
  const int hang_ms_;
  const std::string mode_file_;
  std::atomic<unsigned> calls_{0};
};

}  // namespace

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "fault");
  FaultSink sink(absl::GetFlag(FLAGS_mode), absl::GetFlag(FLAGS_hang_ms),
                 absl::GetFlag(FLAGS_mode_file));
  return sinkline::sdk::Serve(sink);
}
