#include "sinks/stamp/stamp_sink.h"

#include "absl/strings/str_cat.h"

namespace sinkline::sinks {

void StampSink::Stamp(sdk::EventContext& ctx) {
  // Without write access an edit would make the verdict invalid.
  if (!ctx.can_write()) return;
  const std::string& id =
      ctx.queue_id().empty() ? ctx.event().transaction_id() : ctx.queue_id();
  const std::string value = absl::StrCat(name_, "; ", id);
  if (append_) {
    ctx.AppendHeader(header_, value);
  } else {
    ctx.AddHeader(header_, value);
  }
}

}  // namespace sinkline::sinks
