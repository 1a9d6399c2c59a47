#include "sinkline/sdk/sink.h"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <exception>
#include <memory>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/port_file.h"
#include "sinkline/common/process.h"
#include "sinkline/common/shutdown.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7100",
          "gRPC address to serve on (port 0 picks a free port)");
ABSL_FLAG(std::string, port_file, "",
          "write the bound gRPC port to this file once serving");
ABSL_FLAG(int, workers, 4, "threads that run handlers");
ABSL_FLAG(int, shutdown_grace_s, 20,
          "on SIGTERM: health NOT_SERVING at once, then calls in flight get "
          "this long to finish");

namespace sinkline::sdk {

EventContext::EventContext(const v1::SinkRequest& request,
                           std::chrono::system_clock::time_point deadline)
    : request_(request), deadline_(deadline) {
  verdict_.set_action(v1::ACTION_CONTINUE);
}

namespace {

void SetReply(v1::Reply* reply, int code, absl::string_view enhanced,
              absl::string_view text) {
  reply->set_code(code);
  reply->set_enhanced_code(std::string(enhanced));
  reply->clear_lines();
  reply->add_lines(std::string(text));
}

}  // namespace

void EventContext::Continue() {
  verdict_.set_action(v1::ACTION_CONTINUE);
  verdict_.clear_reply();
}

void EventContext::ContinueWithReply(int code, absl::string_view enhanced,
                                     absl::string_view text) {
  verdict_.set_action(v1::ACTION_CONTINUE);
  SetReply(verdict_.mutable_reply(), code, enhanced, text);
}

void EventContext::Consume(int code, absl::string_view enhanced,
                           absl::string_view text) {
  verdict_.set_action(v1::ACTION_CONSUME);
  SetReply(verdict_.mutable_reply(), code, enhanced, text);
}

void EventContext::DropSession(absl::string_view text) {
  Consume(421, "4.7.0", text);
  verdict_.set_drop_session(true);
}

void EventContext::AddHeader(absl::string_view name, absl::string_view value,
                             uint32_t index) {
  auto* add = verdict_.add_content_edits()->mutable_add_header();
  add->set_name(std::string(name));
  add->set_value(std::string(value));
  add->mutable_position()->set_index(index);
}

void EventContext::AppendHeader(absl::string_view name,
                                absl::string_view value) {
  auto* add = verdict_.add_content_edits()->mutable_add_header();
  add->set_name(std::string(name));
  add->set_value(std::string(value));
  add->mutable_position()->set_append(true);
}

void EventContext::ChangeHeader(absl::string_view name, uint32_t occurrence,
                                absl::string_view value) {
  auto* change = verdict_.add_content_edits()->mutable_change_header();
  change->set_name(std::string(name));
  change->set_occurrence(occurrence);
  change->set_value(std::string(value));
}

void EventContext::DeleteHeader(absl::string_view name, uint32_t occurrence) {
  auto* del = verdict_.add_content_edits()->mutable_delete_header();
  del->set_name(std::string(name));
  del->set_occurrence(occurrence);
}

void EventContext::ReplaceBody(absl::string_view body) {
  verdict_.add_content_edits()->mutable_replace_body()->set_body(
      std::string(body));
}

void EventContext::SetSender(absl::string_view mail_from) {
  verdict_.add_envelope_edits()->set_set_sender(std::string(mail_from));
}

void EventContext::AddRecipient(absl::string_view address) {
  verdict_.add_envelope_edits()->mutable_add_recipient()->set_address(
      std::string(address));
}

void EventContext::AddRecipient(absl::string_view address,
                                const std::vector<v1::EsmtpParam>& params) {
  v1::Recipient* r = verdict_.add_envelope_edits()->mutable_add_recipient();
  r->set_address(std::string(address));
  for (const auto& p : params) *r->add_params() = p;
}

void EventContext::RemoveRecipient(absl::string_view address) {
  verdict_.add_envelope_edits()->set_remove_recipient(std::string(address));
}

void Sink::Handle(EventContext& ctx) {
  switch (ctx.event().type()) {
    case v1::EVENT_TYPE_CONNECT:
      return OnConnect(ctx);
    case v1::EVENT_TYPE_HELO:
    case v1::EVENT_TYPE_EHLO:
      return OnHelo(ctx);
    case v1::EVENT_TYPE_MAIL:
      return OnMail(ctx);
    case v1::EVENT_TYPE_RCPT:
      return OnRcpt(ctx);
    case v1::EVENT_TYPE_DATA:
    case v1::EVENT_TYPE_BDAT:
      return OnData(ctx);
    case v1::EVENT_TYPE_EOD:
      return OnEod(ctx);
    default:
      return OnOther(ctx);
  }
}

namespace {

// Runs each call's handler on a worker pool so that a slow handler never
// blocks gRPC's threads.
class SinkService final : public v1::Sink::CallbackService {
 public:
  SinkService(std::string name, Sink& sink, int workers)
      : name_(std::move(name)), sink_(sink), pool_(workers) {}
  ~SinkService() override { pool_.join(); }

  grpc::ServerUnaryReactor* OnEvent(grpc::CallbackServerContext* context,
                                    const v1::SinkRequest* request,
                                    v1::Verdict* verdict) override {
    auto* reactor = context->DefaultReactor();
    const auto deadline = context->deadline();
    boost::asio::post(pool_, [this, request, verdict, reactor, deadline] {
      const auto start = std::chrono::steady_clock::now();
      const std::string event = v1::EventType_Name(request->event().type());
      grpc::Status status;
      try {
        EventContext ctx(*request, deadline);
        sink_.Handle(ctx);
        *verdict = ctx.verdict();
      } catch (const std::exception& e) {
        spdlog::error("{}: handler failed on {}: {}", name_, event, e.what());
        status = grpc::Status(grpc::StatusCode::INTERNAL,
                              absl::StrCat("sink handler failed: ", e.what()));
      }
      auto& registry = MetricsRegistry::Default();
      registry
          .GetCounter(
              "sinkline_sink_calls_total", "Calls handled by the sink.",
              {{"event", event}, {"ok", status.ok() ? "true" : "false"}})
          .Inc();
      registry
          .GetHistogram("sinkline_sink_handler_seconds",
                        "Time the handler took.", {{"event", event}})
          .Observe(std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count());
      reactor->Finish(status);
    });
    return reactor;
  }

 private:
  const std::string name_;
  Sink& sink_;
  boost::asio::thread_pool pool_;
};

}  // namespace

namespace {
std::string& SinkName() {
  static auto* name = new std::string("sink");
  return *name;
}
}  // namespace

void Init(int argc, char** argv, const std::string& name) {
  SinkName() = name;
  InitProcess(argc, argv, name);
}

int Serve(Sink& sink) {
  const std::string& name = SinkName();
  ProcessServices process;
  if (const int rc = StartProcess(process); rc != 0) return rc;

  SinkService service(name, sink, std::max(1, absl::GetFlag(FLAGS_workers)));
  auto server = StartGrpcServer(absl::GetFlag(FLAGS_listen), {&service},
                                {"sinkline.v1.Sink"});
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  if (auto st = WritePortFile(absl::GetFlag(FLAGS_port_file), server->port);
      !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  spdlog::info("{} sink serving on port {}", name, server->port);
  const int sig = WaitForShutdownSignal();
  spdlog::info("signal {}: shutting down (grace {}s)", sig,
               absl::GetFlag(FLAGS_shutdown_grace_s));
  server->Stop(std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_s)));
  return 0;
}

}  // namespace sinkline::sdk
