#include "stamp_sink.h"

#include "absl/strings/str_cat.h"

namespace sinkline::sinks {

void StampSink::Stamp(sdk::EventContext& ctx) {
  // Without write access an edit would make the verdict invalid.
  if (!ctx.can_write()) return;
  const std::string& id =
      ctx.queue_id().empty() ? ctx.event().transaction_id() : ctx.queue_id();
  ctx.AddHeader(header_, absl::StrCat(name_, "; ", id));
}

}  // namespace sinkline::sinks
