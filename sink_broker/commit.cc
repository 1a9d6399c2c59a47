#include "sink_broker/commit.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "sink_broker/message_edit.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {

v1::Reply StoreFailureReply(const absl::Status& st) {
  if (st.code() == absl::StatusCode::kResourceExhausted) {
    MetricsRegistry::Default()
        .GetCounter("sinkline_broker_spool_full_total",
                    "Transactions answered 452 4.3.1 because the spool's "
                    "disk was full.")
        .Inc();
    return MakeReply(452, "4.3.1",
                     "Error: insufficient system storage, try again later");
  }
  return MakeReply(451, "4.3.0",
                   "Error: queue file write error, try again later");
}

NativeResult CommitMessage(const CommitContext& ctx,
                           const std::string& queue_id,
                           IncomingMessage& message, MessageRecord& record,
                           ChainRun& run, v1::QueueEntry& committed) {
  v1::QueueEntry entry;
  entry.set_queue_id(queue_id);
  *entry.mutable_envelope() = record.envelope();
  *entry.mutable_session() = run.event().session();
  entry.set_transaction_id(run.event().transaction_id());
  *entry.mutable_committed() = sinkline::NowTimestamp();
  entry.set_broker_id(ctx.broker_id);
  entry.set_size(message.size());
  if (auto st = message.Commit(*ctx.spool, entry); !st.ok()) {
    spdlog::error("COMMIT failed: {}", st.ToString());
    run.set_reply(StoreFailureReply(st));
    return NativeResult::kStop;
  }
  committed = entry;
  record.set_path(ctx.spool->ContentPath(entry.queue_id()));
  record.set_queue_id(entry.queue_id());
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_messages_total",
                  "Messages by what happened to them (committed, submitted, "
                  "quarantined).",
                  {{"what", "committed"}})
      .Inc();
  ctx.messages->Forget(
      absl::StrCat(entry.session().session_id(), "-", entry.transaction_id()));
  ctx.messages->Track(
      entry.queue_id(), v1::MESSAGE_STATE_LEASED, entry.envelope(),
      entry.size(),
      absl::StrCat("committed from session ", entry.session().session_id(),
                   " (client ", entry.session().client().ip(), ")"));
  run.mutable_event().set_queue_id(entry.queue_id());
  run.set_reply(MakeReply(250, "2.0.0",
                          absl::StrCat("Ok: queued as ", entry.queue_id())));
  spdlog::info(
      "committed queue_id={} session={} from=<{}> recipients={} size={}",
      entry.queue_id(), run.event().session().session_id(),
      entry.envelope().mail_from(), entry.envelope().recipients_size(),
      entry.size());
  return NativeResult::kReply;
}

MessageRecord::ApplyEdits CommittedEdits(
    std::shared_ptr<std::weak_ptr<MessageRecord>> holder) {
  return [holder](const std::vector<v1::ContentEdit>& edits) -> absl::Status {
    auto rec = holder->lock();
    if (!rec) return absl::FailedPreconditionError("message released");
    const std::string path = rec->path();
    const std::string tmp = path + ".edit";
    auto size = RewriteMessage(path, tmp, edits);
    if (!size.ok()) return size.status();
    SINKLINE_FAILPOINT("lease.publish.before_rename");
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::UnavailableError("rename of the new version failed");
    }
    SINKLINE_FAILPOINT("lease.publish.after_rename");
    auto st = SyncDirectory(std::filesystem::path(path).parent_path().string());
    SINKLINE_FAILPOINT("lease.publish.after_sync");
    return st;
  };
}

MessageRecord::ApplyEdits ArrivingEdits(
    std::shared_ptr<IncomingMessage> message,
    std::shared_ptr<std::weak_ptr<MessageRecord>> holder) {
  return [message, holder, committed = CommittedEdits(holder)](
             const std::vector<v1::ContentEdit>& edits) -> absl::Status {
    auto rec = holder->lock();
    if (!rec) return absl::FailedPreconditionError("message released");
    if (!rec->queue_id().empty()) return committed(edits);
    const std::string tmp = rec->path() + ".edit";
    // Not fsynced: COMMIT fsyncs the file that takes its place (the
    // message is not acknowledged before that).
    auto size = RewriteMessage(rec->path(), tmp, edits, 1 << 20,
                               /*sync=*/false);
    if (!size.ok()) return size.status();
    return message->ReplaceWith(tmp, *size);
  };
}

}  // namespace sinkline::broker
