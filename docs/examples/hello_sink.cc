// A complete Sinkline sink: it refuses one recipient, tags every message,
// and answers the custom XSTATUS command. Build it like sinks/stamp (link
// sinkline_sink_sdk) and bind it in the broker's bindings file.
#include "sinkline/sdk/sink.h"

namespace sdk = sinkline::sdk;

class HelloSink : public sdk::Sink {
 public:
  // RCPT: refuse one address; every other recipient goes on.
  void OnRcpt(sdk::EventContext& ctx) override {
    if (ctx.recipient() == "nobody@example.test") {
      ctx.Reject(550, "5.1.1", "No such user here");
    }
  }

  // EOD (bind with content_access: read-write): add a header.
  void OnEod(sdk::EventContext& ctx) override {
    if (ctx.can_write()) ctx.AddHeader("X-Hello", "checked by hello-sink");
  }

  // Custom verbs (bind the verb, e.g. event: XSTATUS): answer them.
  void OnOther(sdk::EventContext& ctx) override {
    if (ctx.event().verb() == "XSTATUS") {
      ctx.Consume(250, "2.0.0", "Status: all sinks fine");
    }
  }
};

int main(int argc, char** argv) {
  HelloSink sink;
  return sdk::RunSink(argc, argv, "hello", sink);
}
