// The Sinkline sink SDK: a sink is a class with one handler per event it
// cares about. Each handler gets an EventContext with the event (session,
// envelope, the recipient at hand), the lease and the inline content, and
// typed helpers to build the verdict. RunSink() brings the server around it:
// flags, reflection, health, metrics, graceful shutdown.
//
//   class Hello : public sinkline::sdk::Sink {
//     void OnEod(sinkline::sdk::EventContext& ctx) override {
//       ctx.AddHeader("X-Hello", "world");
//     }
//   };
//   int main(int argc, char** argv) {
//     Hello sink;
//     return sinkline::sdk::RunSink(argc, argv, "hello", sink);
//   }
//
// A sink with flags of its own calls Init(), reads them, then Serve().
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "sinkline/v1/sink.grpc.pb.h"

namespace sinkline::sdk {

namespace v1 = ::sinkline::v1;

// The context of one invocation; handlers fill in the verdict through it.
class EventContext {
 public:
  // `deadline`: the broker's deadline for this call (the binding's).
  explicit EventContext(const v1::SinkRequest& request,
                        std::chrono::system_clock::time_point deadline =
                            std::chrono::system_clock::time_point::max());

  // What happened.
  const v1::SinkRequest& request() const { return request_; }
  const v1::Event& event() const { return request_.event(); }
  const v1::SessionInfo& session() const { return request_.event().session(); }
  const v1::Envelope& envelope() const { return request_.event().envelope(); }
  // RCPT: the recipient at hand.
  const std::string& recipient() const {
    return request_.event().recipient().address();
  }
  const std::string& queue_id() const { return request_.event().queue_id(); }
  const std::string& binding() const { return request_.binding(); }
  bool after_commit() const { return request_.after_commit(); }
  bool redelivery() const { return request_.redelivery(); }
  const v1::Lease& lease() const { return request_.lease(); }
  // When the broker stops waiting for the verdict (max() when unbounded).
  std::chrono::system_clock::time_point deadline() const { return deadline_; }
  bool can_write() const {
    return request_.lease().access() == v1::CONTENT_ACCESS_READ_WRITE;
  }
  // The whole message when the broker sent it inline, else null.
  const std::string* inline_content() const {
    return request_.content_inline() ? &request_.inline_content() : nullptr;
  }

  // Verdict helpers. Continue is the default.
  void Continue();
  // Continue, but answer with this reply (e.g. a custom 250 text).
  void ContinueWithReply(int code, absl::string_view enhanced,
                         absl::string_view text);
  // Stop the chain and answer; the native handler does not run.
  void Consume(int code, absl::string_view enhanced, absl::string_view text);
  // Refuse: consume with a 4xx/5xx (for RCPT, only this recipient).
  void Reject(int code, absl::string_view enhanced, absl::string_view text) {
    Consume(code, enhanced, text);
  }
  // Answer 421 and close the session.
  void DropSession(absl::string_view text);

  // Content edits (need a read-write binding).
  void AddHeader(absl::string_view name, absl::string_view value,
                 uint32_t index = 0);
  void AppendHeader(absl::string_view name, absl::string_view value);
  void ChangeHeader(absl::string_view name, uint32_t occurrence,
                    absl::string_view value);
  void DeleteHeader(absl::string_view name, uint32_t occurrence = 1);
  void ReplaceBody(absl::string_view body);

  // Envelope edits.
  void SetSender(absl::string_view mail_from);
  void AddRecipient(absl::string_view address);
  // With RCPT parameters (NOTIFY, ORCPT, ...).
  void AddRecipient(absl::string_view address,
                    const std::vector<v1::EsmtpParam>& params);
  void RemoveRecipient(absl::string_view address);

  // Keep the lease after answering; release it later through the broker's
  // Content service with lease().token().
  void HoldLease() { verdict_.set_hold_lease(true); }

  const v1::Verdict& verdict() const { return verdict_; }

 private:
  const v1::SinkRequest& request_;
  const std::chrono::system_clock::time_point deadline_;
  v1::Verdict verdict_;
};

// Base class of a sink: override the events you bind to. Every handler's
// default is Continue. Handlers run on the SDK's worker threads, one call at a
// time per invocation; they may block (a slow sink slows only its calls).
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void OnConnect(EventContext&) {}
  virtual void OnHelo(EventContext&) {}
  virtual void OnMail(EventContext&) {}
  virtual void OnRcpt(EventContext&) {}
  virtual void OnData(EventContext&) {}
  virtual void OnEod(EventContext&) {}
  // Custom verbs and every other event.
  virtual void OnOther(EventContext&) {}

  // Dispatches to the handler of `ctx.event().type()`.
  void Handle(EventContext& ctx);
};

// Parses flags (--listen, --port-file, --metrics-listen, --workers,
// --log-level, --log-json, plus any the sink defines with ABSL_FLAG) and sets
// up logging. Call first in main, before other threads start.
void Init(int argc, char** argv, const std::string& name);

// Serves `sink` as sinkline.v1.Sink, with reflection, health and metrics,
// until SIGTERM/SIGINT; then drains calls and returns the exit code.
int Serve(Sink& sink);

// Init, then Serve: for sinks that need no flags of their own.
inline int RunSink(int argc, char** argv, const std::string& name, Sink& sink) {
  Init(argc, argv, name);
  return Serve(sink);
}

}  // namespace sinkline::sdk
