#include "dkim_sign_sink.h"

#include <spdlog/spdlog.h>

#include "sinkline/common/metrics.h"
#include "sinkline/sdk/content.h"

namespace sinkline::sinks {

namespace {

void Count(const char* result) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_dkim_messages_total",
                  "Messages the dkim-sign sink saw, by result.",
                  {{"result", result}})
      .Inc();
}

}  // namespace

void DkimSignSink::OnEod(sdk::EventContext& ctx) {
  const std::string& id = ctx.event().transaction_id();
  if (!ctx.can_write()) {
    spdlog::error("dkim-sign: binding {} is not read-write; not signing",
                  ctx.binding());
    Count("error");
    return;
  }
  auto fail = [&](const absl::Status& st) {
    spdlog::error("dkim-sign {}: {}", id, st.ToString());
    Count("error");
    if (tempfail_on_error_) {
      ctx.Reject(451, "4.3.0", "Message could not be signed, try again later");
    }
  };
  auto message = sdk::ReadMessage(ctx);
  if (!message.ok()) return fail(message.status());
  auto signatures = signer_->Sign(*message, id);
  if (!signatures.ok()) return fail(signatures.status());
  if (signatures->empty()) {
    spdlog::debug("dkim-sign {}: no key for this From: domain", id);
    Count("unsigned");
    return;
  }
  for (const std::string& value : *signatures) {
    ctx.AddHeader("DKIM-Signature", value);
  }
  Count("signed");
}

}  // namespace sinkline::sinks
