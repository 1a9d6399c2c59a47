#include "stamp_sink.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace sinkline::sinks {

using sinkline::v1::Verdict;

Verdict StampVerdict(const std::string& sink_name,
                     const std::string& header_name,
                     const sinkline::v1::SinkRequest& request) {
  Verdict verdict;
  verdict.set_action(sinkline::v1::ACTION_CONTINUE);
  if (request.lease().access() != sinkline::v1::CONTENT_ACCESS_READ_WRITE) {
    // Without write access an edit would make the verdict invalid.
    return verdict;
  }
  const auto& event = request.event();
  const std::string& id =
      event.queue_id().empty() ? event.transaction_id() : event.queue_id();
  auto* add = verdict.add_content_edits()->mutable_add_header();
  add->set_name(header_name);
  add->set_value(absl::StrCat(sink_name, "; ", id));
  add->mutable_position()->set_index(0);
  return verdict;
}

grpc::ServerUnaryReactor* StampSink::OnEvent(
    grpc::CallbackServerContext* context,
    const sinkline::v1::SinkRequest* request, sinkline::v1::Verdict* verdict) {
  *verdict = StampVerdict(sink_name_, header_name_, *request);
  spdlog::info("stamp binding={} session={} queue_id={} edits={}",
               request->binding(), request->event().session().session_id(),
               request->event().queue_id(), verdict->content_edits_size());
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace sinkline::sinks
