#include "sinks/archive/archive_sink.h"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/metrics.h"
#include "sinkline/sdk/content.h"
#include "sinkline/sdk/files.h"

namespace sinkline::sinks {

namespace {

Counter& Archived(bool ok) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_archive_messages_total", "Messages the archive sink copied.",
      {{"ok", ok ? "true" : "false"}});
}

}  // namespace

bool SafeFileName(absl::string_view name) {
  if (name.empty() || name.front() == '.' || name.size() > 200) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

ArchiveSink::ArchiveSink(ArchiveOptions options)
    : options_(std::move(options)), pool_(std::max(1, options_.threads)) {}

ArchiveSink::~ArchiveSink() { pool_.join(); }

void ArchiveSink::OnEod(sdk::EventContext& ctx) {
  if (ctx.lease().token().empty()) {
    spdlog::error(
        "archive: binding {} grants no content access; bind with "
        "content_access: read",
        ctx.binding());
    return;
  }
  if (!ctx.after_commit() || ctx.queue_id().empty()) {
    spdlog::error("archive: binding {} runs before COMMIT; bind after 24575",
                  ctx.binding());
    return;
  }
  ctx.HoldLease();
  auto request = std::make_shared<v1::SinkRequest>(ctx.request());
  // The copy does not need the inline content; drop it early.
  request->clear_inline_content();
  boost::asio::post(pool_, [this, request] { Run(*request); });
}

absl::Status ArchiveSink::Archive(const v1::SinkRequest& request) {
  const std::string& qid = request.event().queue_id();
  if (!SafeFileName(qid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue id \"", qid, "\" is not a safe file name"));
  }
  auto message =
      sdk::ContentClient::Default().ReadAll(sdk::ClaimedLease(request));
  if (!message.ok()) return message.status();

  v1::QueueEntry entry;
  entry.set_queue_id(qid);
  *entry.mutable_envelope() = request.event().envelope();
  *entry.mutable_session() = request.event().session();
  entry.set_transaction_id(request.event().transaction_id());
  entry.set_size(message->size());
  std::string json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  if (auto st = google::protobuf::util::MessageToJsonString(entry, &json,
                                                            json_options);
      !st.ok()) {
    return absl::InternalError(absl::StrCat("envelope JSON: ", st.ToString()));
  }
  json += "\n";
  if (auto st = sdk::WriteFileAtomically(options_.dir, qid + ".eml", *message,
                                         options_.sync);
      !st.ok()) {
    return st;
  }
  return sdk::WriteFileAtomically(options_.dir, qid + ".json", json,
                                  options_.sync);
}

void ArchiveSink::Run(const v1::SinkRequest& request) {
  const std::string& qid = request.event().queue_id();
  auto& content = sdk::ContentClient::Default();
  if (options_.renew > absl::ZeroDuration()) {
    if (auto st = content.Renew(sdk::ClaimedLease(request), options_.renew);
        !st.ok()) {
      spdlog::warn("archive {}: renew: {}", qid, st.ToString());
    }
  }
  absl::Status st;
  for (int attempt = 1; attempt <= std::max(1, options_.attempts); ++attempt) {
    st = Archive(request);
    if (st.ok() || absl::IsFailedPrecondition(st) || absl::IsNotFound(st) ||
        absl::IsInvalidArgument(st) || absl::IsPermissionDenied(st)) {
      break;  // done, or retrying cannot help
    }
    spdlog::warn("archive {}: attempt {}: {}", qid, attempt, st.ToString());
    std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
  }
  Archived(st.ok()).Inc();
  if (!st.ok()) {
    spdlog::error("archive {}: not archived, lease left to expire: {}", qid,
                  st.ToString());
    return;
  }
  if (auto rel = content.Release(sdk::ClaimedLease(request)); !rel.ok()) {
    spdlog::error("archive {}: archived, but release failed: {}", qid,
                  rel.ToString());
    return;
  }
  spdlog::debug("archive {}: archived and released", qid);
}

}  // namespace sinkline::sinks
