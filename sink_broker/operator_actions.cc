#include "sink_broker/operator_actions.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;

constexpr uint64_t kDefaultReadBytes = 1 << 20;
constexpr uint64_t kMaxReadBytes = 3 << 20;

absl::Status NoSuchMessage(const std::string& queue_id) {
  return absl::NotFoundError("no message with queue id " + queue_id);
}

}  // namespace

OperatorActions::Attempt::~Attempt() {
  if (actions_ == nullptr) return;
  absl::MutexLock lock(&actions_->mu_);
  actions_->attempting_.erase(queue_id_);
}

OperatorActions::Attempt OperatorActions::BeginAttempt(
    const std::string& queue_id) {
  absl::MutexLock lock(&mu_);
  const auto state = messages_.State(queue_id);
  if (state == v1::MESSAGE_STATE_HELD || state == v1::MESSAGE_STATE_DELETED) {
    spdlog::info(
        "queue_id={} not handed to the queue backend: {} by an "
        "operator",
        queue_id, MessageStateName(*state));
    return Attempt(nullptr, queue_id);
  }
  attempting_.insert(queue_id);
  return Attempt(this, queue_id);
}

absl::Status OperatorActions::Hold(const std::string& queue_id,
                                   const std::string& reason) {
  absl::MutexLock release_lock(&release_mu_);
  absl::MutexLock lock(&mu_);
  const auto state = messages_.State(queue_id);
  if (!state || queue_id.empty()) return NoSuchMessage(queue_id);
  if (*state != v1::MESSAGE_STATE_RELEASING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "message ", queue_id, " is ", MessageStateName(*state),
        "; only a message that waits for the queue backend (releasing) can "
        "be held"));
  }
  if (attempting_.count(queue_id) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("message ", queue_id,
                     " is being handed to the queue backend right now; try "
                     "again"));
  }
  const std::string why =
      reason.empty() ? "held by an operator" : "held by an operator: " + reason;
  // The same record a lease expiry under the hold policy leaves: a restart
  // finds the message held.
  if (auto st = spool_.WriteHold(queue_id, v1::MESSAGE_STATE_HELD, why);
      !st.ok()) {
    return st;
  }
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_messages_total",
                  "Messages by what happened to them (committed, submitted, "
                  "quarantined).",
                  {{"what", "held"}})
      .Inc();
  messages_.SetState(queue_id, v1::MESSAGE_STATE_HELD, why, why);
  spdlog::warn("queue_id={} held by an operator (was {})", queue_id,
               MessageStateName(*state));
  return absl::OkStatus();
}

absl::Status OperatorActions::Delete(const std::string& queue_id) {
  absl::MutexLock release_lock(&release_mu_);
  absl::MutexLock lock(&mu_);
  const auto state = messages_.State(queue_id);
  if (!state || queue_id.empty()) return NoSuchMessage(queue_id);
  switch (*state) {
    case v1::MESSAGE_STATE_HELD:
    case v1::MESSAGE_STATE_QUARANTINED:
    case v1::MESSAGE_STATE_FAILED:
    case v1::MESSAGE_STATE_RELEASING:
      break;
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          "message ", queue_id, " is ", MessageStateName(*state),
          "; only held, quarantined, failed or waiting (releasing) messages "
          "can be deleted"));
  }
  if (attempting_.count(queue_id) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("message ", queue_id,
                     " is being handed to the queue backend right now; try "
                     "again"));
  }
  auto removed = spool_.RemoveAll(queue_id);
  if (!removed.ok()) return removed.status();
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_messages_total",
                  "Messages by what happened to them (committed, submitted, "
                  "quarantined).",
                  {{"what", "deleted"}})
      .Inc();
  messages_.SetState(queue_id, v1::MESSAGE_STATE_DELETED,
                     absl::StrCat("deleted by an operator (was ",
                                  MessageStateName(*state), ")"),
                     "deleted by an operator");
  spdlog::warn("queue_id={} deleted by an operator (was {}; {} files removed)",
               queue_id, MessageStateName(*state), *removed);
  return absl::OkStatus();
}

absl::StatusOr<v1::ReadMessageResponse> OperatorActions::Read(
    const v1::ReadMessageRequest& request) const {
  const std::string& queue_id = request.queue_id();
  const auto state = messages_.State(queue_id);
  if (!state || queue_id.empty()) return NoSuchMessage(queue_id);
  // Edits replace the content file by a rename: an open file stays one
  // version.
  std::ifstream in(spool_.ContentPath(queue_id), std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("message ", queue_id, " is ", MessageStateName(*state),
                     "; its content is no longer in the spool"));
  }
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  uint64_t limit =
      request.max_bytes() == 0 ? kDefaultReadBytes : request.max_bytes();
  limit = std::min(limit, kMaxReadBytes);
  std::string data(std::min(limit, size), '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  v1::ReadMessageResponse out;
  out.set_size(size);
  bool truncated = data.size() < size;
  if (request.headers_only()) {
    if (data.rfind("\r\n", 0) == 0) {
      data.resize(2);  // no header fields at all
      truncated = false;
    } else if (const auto end = data.find("\r\n\r\n");
               end != std::string::npos) {
      data.resize(end + 4);
      truncated = false;
    }
  }
  out.set_truncated(truncated);
  out.set_data(std::move(data));
  return out;
}

void UpdateOperatorGauges(const MessageTable& messages,
                          const std::string& spool_dir) {
  std::error_code ec;
  if (const auto space = fs::space(spool_dir, ec); !ec) {
    for (const auto& [kind, bytes] :
         {std::pair<const char*, uintmax_t>{"size", space.capacity},
          {"avail", space.available}}) {
      MetricsRegistry::Default()
          .GetGauge("sinkline_broker_spool_filesystem_bytes",
                    "Size and space available to the broker of the "
                    "filesystem its spool is on.",
                    {{"kind", kind}})
          .Set(static_cast<double>(bytes));
    }
  }
  double oldest = 0;
  const auto now = sinkline::NowTimestamp();
  for (const auto& m : messages.List(v1::MESSAGE_STATE_RELEASING)) {
    if (m.history().empty()) continue;
    // The first history entry is when the broker took the message on (its
    // COMMIT, or the start that recovered it).
    const auto age = now - m.history(0).time();
    oldest = std::max(oldest, TimeUtil::DurationToMilliseconds(age) / 1e3);
  }
  MetricsRegistry::Default()
      .GetGauge("sinkline_broker_oldest_deferred_seconds",
                "Age of the oldest message that waits for the queue backend "
                "(releasing, e.g. deferred by the next hop); 0 with none.")
      .Set(oldest);
}

}  // namespace sinkline::broker
