#include "sink_broker/spool.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "sink_broker/messages.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace fs = std::filesystem;

namespace {

// The queue id of a spool file: its name up to the first dot.
std::string IdOf(const fs::path& path) {
  const std::string name = path.filename().string();
  return name.substr(0, name.find('.'));
}

}  // namespace

std::string Spool::Committed(const std::string& queue_id,
                             const char* ext) const {
  return absl::StrCat(dir_, "/committed/", queue_id, ext);
}

std::string Spool::FailedPath(const std::string& queue_id,
                              const char* ext) const {
  return absl::StrCat(dir_, "/failed/", queue_id, ext);
}

std::string Spool::ContentPath(const std::string& queue_id) const {
  return Committed(queue_id, ".msg");
}

std::string Spool::EnvelopePath(const std::string& queue_id) const {
  return Committed(queue_id, ".env");
}

std::string Spool::FailedContentPath(const std::string& queue_id) const {
  return FailedPath(queue_id, ".msg");
}

absl::Status Spool::Prepare() const {
  std::error_code ec;
  for (const char* sub : {"incoming", "committed", "failed"}) {
    fs::create_directories(fs::path(dir_) / sub, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create ", dir_, "/", sub, ": ", ec.message()));
    }
  }
  for (const auto& entry :
       fs::directory_iterator(fs::path(dir_) / "incoming", ec)) {
    fs::remove(entry.path(), ec);
  }
  return absl::OkStatus();
}

absl::Status Spool::WriteEnvelope(const v1::QueueEntry& entry) const {
  std::string bytes;
  entry.SerializeToString(&bytes);
  return WriteFileDurably(EnvelopePath(entry.queue_id()), bytes);
}

absl::StatusOr<v1::QueueEntry> Spool::ReadEnvelope(
    const std::string& queue_id) const {
  const std::string path = EnvelopePath(queue_id);
  v1::QueueEntry entry;
  if (!entry.ParseFromString(ReadWholeFile(path))) {
    return absl::DataLossError("unreadable envelope record " + path);
  }
  return entry;
}

absl::Status Spool::WriteEditedEnvelope(const std::string& queue_id,
                                        const v1::Envelope& envelope) const {
  auto entry = ReadEnvelope(queue_id);
  if (!entry.ok()) return entry.status();
  *entry->mutable_envelope() = envelope;
  SINKLINE_FAILPOINT("lease.envelope.before_write");
  auto st = WriteEnvelope(*entry);
  SINKLINE_FAILPOINT("lease.envelope.after_write");
  return st;
}

void Spool::MarkFinished(const std::string& queue_id,
                         const std::string& binding) const {
  SINKLINE_FAILPOINT("done.before_write");
  const std::string path = Committed(queue_id, ".done");
  int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return;
  if (WriteAll(fd, binding + "\n").ok()) ::fsync(fd);
  ::close(fd);
  SINKLINE_FAILPOINT("done.after_write");
}

std::set<std::string> Spool::Finished(const std::string& queue_id) const {
  std::set<std::string> out;
  std::ifstream in(Committed(queue_id, ".done"));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.insert(line);
  }
  return out;
}

absl::Status Spool::WriteHold(const std::string& queue_id,
                              v1::MessageState state,
                              const std::string& reason) const {
  SINKLINE_FAILPOINT("hold.before_write");
  auto st = WriteFileDurably(Committed(queue_id, ".hold"),
                             MessageStateName(state) + "\n" + reason + "\n");
  SINKLINE_FAILPOINT("hold.after_write");
  return st;
}

std::optional<Spool::Hold> Spool::ReadHold(const std::string& queue_id) const {
  std::ifstream in(Committed(queue_id, ".hold"));
  if (!in) return std::nullopt;
  std::string state_name;
  Hold hold;
  std::getline(in, state_name);
  std::getline(in, hold.reason);
  hold.state = state_name == "held" ? v1::MESSAGE_STATE_HELD
                                    : v1::MESSAGE_STATE_QUARANTINED;
  return hold;
}

void Spool::RemoveHold(const std::string& queue_id) const {
  ::unlink(Committed(queue_id, ".hold").c_str());
}

void Spool::RemoveCommitted(const std::string& queue_id) const {
  ::unlink(EnvelopePath(queue_id).c_str());
  ::unlink(ContentPath(queue_id).c_str());
  ::unlink(Committed(queue_id, ".done").c_str());
}

absl::Status Spool::MoveToFailed(const std::string& queue_id,
                                 const std::string& reason) const {
  std::error_code ec;
  fs::rename(ContentPath(queue_id), FailedPath(queue_id, ".msg"), ec);
  if (!ec) fs::rename(EnvelopePath(queue_id), FailedPath(queue_id, ".env"), ec);
  auto st =
      ec ? absl::UnavailableError(ec.message())
         : WriteFileDurably(FailedPath(queue_id, ".reason"), reason + "\n");
  if (st.ok()) st = SyncDirectory(dir_ + "/committed");
  ::unlink(Committed(queue_id, ".done").c_str());
  return st;
}

absl::StatusOr<int> Spool::RemoveAll(const std::string& queue_id) const {
  int removed = 0;
  std::error_code ec;
  for (const std::string& path :
       {EnvelopePath(queue_id), ContentPath(queue_id),
        Committed(queue_id, ".hold"), Committed(queue_id, ".done"),
        Committed(queue_id, ".rcpt"), FailedPath(queue_id, ".env"),
        FailedPath(queue_id, ".msg"), FailedPath(queue_id, ".reason")}) {
    removed += fs::remove(path, ec) ? 1 : 0;
  }
  for (const char* dir : {"/committed", "/failed"}) {
    if (auto st = SyncDirectory(dir_ + dir); !st.ok()) return st;
  }
  return removed;
}

absl::Status Spool::RestoreFailed(const std::string& queue_id) const {
  std::error_code ec;
  fs::rename(FailedPath(queue_id, ".msg"), ContentPath(queue_id), ec);
  if (!ec) fs::rename(FailedPath(queue_id, ".env"), EnvelopePath(queue_id), ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "cannot move ", queue_id, " back from failed/: ", ec.message()));
  }
  fs::remove(FailedPath(queue_id, ".reason"), ec);
  return SyncDirectory(dir_ + "/committed");
}

std::vector<v1::QueueEntry> Spool::ListCommitted() const {
  std::vector<v1::QueueEntry> out;
  std::error_code ec;
  for (const auto& entry :
       fs::directory_iterator(fs::path(dir_) / "committed", ec)) {
    if (entry.path().extension() != ".env") continue;
    v1::QueueEntry e;
    if (!e.ParseFromString(ReadWholeFile(entry.path().string()))) {
      spdlog::error("unreadable envelope record {}", entry.path().string());
      continue;
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<Spool::Failed> Spool::ListFailed() const {
  std::vector<Failed> out;
  std::error_code ec;
  for (const auto& entry :
       fs::directory_iterator(fs::path(dir_) / "failed", ec)) {
    if (entry.path().extension() != ".env") continue;
    Failed f;
    if (!f.entry.ParseFromString(ReadWholeFile(entry.path().string()))) {
      continue;
    }
    f.reason = ReadWholeFile(FailedPath(IdOf(entry.path()), ".reason"));
    while (!f.reason.empty() && f.reason.back() == '\n') f.reason.pop_back();
    out.push_back(std::move(f));
  }
  return out;
}

int Spool::RemovePartialCommits() const {
  const fs::path dir = fs::path(dir_) / "committed";
  std::error_code ec;
  std::set<std::string> committed;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    files.push_back(entry.path());
    if (entry.path().extension() == ".env") {
      committed.insert(IdOf(entry.path()));
    }
  }
  int removed = 0;
  for (const auto& path : files) {
    const bool partial_write =
        path.extension() == ".tmp" || path.extension() == ".edit";
    if (committed.count(IdOf(path)) != 0 && !partial_write) continue;
    if (fs::remove(path, ec)) {
      ++removed;
      spdlog::warn("removed {} from the spool: {}", path.filename().string(),
                   partial_write ? "an unfinished write"
                                 : "a COMMIT that did not finish");
    }
  }
  if (removed > 0) (void)SyncDirectory(dir.string());
  return removed;
}

std::map<std::string, uint64_t> Spool::UpdateGauges() const {
  std::map<std::string, uint64_t> bytes;
  for (const char* dir : {"incoming", "committed", "failed"}) {
    uint64_t total = 0;
    uint64_t messages = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(fs::path(dir_) / dir, ec)) {
      std::error_code size_ec;
      const uint64_t size = entry.file_size(size_ec);
      if (size_ec) continue;  // gone meanwhile
      total += size;
      const auto ext = entry.path().extension();
      // Arriving content has no extension; committed and failed messages
      // are <id>.msg beside their records.
      if (ext == ".msg" || (ext.empty() && std::string(dir) == "incoming")) {
        ++messages;
      }
    }
    bytes[dir] = total;
    MetricsRegistry::Default()
        .GetGauge("sinkline_broker_spool_bytes",
                  "Bytes in the spool by directory (incoming: arriving; "
                  "committed: durable, not yet submitted; failed).",
                  {{"dir", dir}})
        .Set(static_cast<double>(total));
    MetricsRegistry::Default()
        .GetGauge("sinkline_broker_spool_messages",
                  "Messages in the spool by directory.", {{"dir", dir}})
        .Set(static_cast<double>(messages));
  }
  return bytes;
}

}  // namespace sinkline::broker
