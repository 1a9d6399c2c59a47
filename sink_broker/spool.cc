#include "sink_broker/spool.h"

#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "sink_broker/messages.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace fs = std::filesystem;

namespace {

// The store's keys (spool.h lists them).
std::string EnvKey(const std::string& id) { return "e/" + id; }
std::string DoneKey(const std::string& id) { return "d/" + id + "/"; }
std::string HoldKey(const std::string& id) { return "h/" + id; }
std::string RcptKey(const std::string& id) { return "r/" + id; }
std::string FailKey(const std::string& id) { return "f/" + id; }

rocksdb::Slice S(const std::string& s) { return rocksdb::Slice(s); }

// The queue id of a spool file: its name up to the first dot.
std::string IdOf(const fs::path& path) {
  const std::string name = path.filename().string();
  return name.substr(0, name.find('.'));
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u >= 0x7f) {
      absl::StrAppendFormat(&out, "\\u%04x", u);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

absl::Status DumpSpool(const std::string& spool_dir, std::ostream& out) {
  return SpoolStore::Dump(spool_dir + "/state", [&](absl::string_view key,
                                                    absl::string_view value) {
    out << "{\"key\": " << JsonString(key);
    v1::QueueEntry entry;
    std::string json;
    if (absl::StartsWith(key, "e/") &&
        entry.ParseFromArray(value.data(), static_cast<int>(value.size())) &&
        google::protobuf::util::MessageToJsonString(entry, &json).ok()) {
      out << ", \"entry\": " << json;
    } else {
      out << ", \"value\": " << JsonString(value);
    }
    out << "}\n";
  });
}

Spool::Spool(std::string dir, const StoreOptions& options)
    : dir_(std::move(dir)) {
  auto store = SpoolStore::Open(dir_ + "/state", options);
  if (store.ok()) {
    store_ = std::move(*store);
  } else {
    open_status_ = store.status();
  }
}

absl::Status Spool::Ready() const {
  if (store_) return absl::OkStatus();
  return open_status_;
}

std::string Spool::Committed(const std::string& queue_id,
                             const char* ext) const {
  return absl::StrCat(dir_, "/committed/", queue_id, ext);
}

std::string Spool::ContentPath(const std::string& queue_id) const {
  return Committed(queue_id, ".msg");
}

absl::Status Spool::Prepare() const {
  std::error_code ec;
  for (const char* sub : {"incoming", "committed"}) {
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
  if (auto st = Ready(); !st.ok()) return st;
  return ImportOldLayout();
}

absl::Status Spool::WriteEnvelope(const v1::QueueEntry& entry) const {
  if (auto st = Ready(); !st.ok()) return st;
  std::string bytes;
  entry.SerializeToString(&bytes);
  rocksdb::WriteBatch batch;
  batch.Put(S(EnvKey(entry.queue_id())), S(bytes));
  return store_->Write(batch, /*sync=*/true);
}

absl::StatusOr<v1::QueueEntry> Spool::ReadEnvelope(
    const std::string& queue_id) const {
  if (auto st = Ready(); !st.ok()) return st;
  auto bytes = store_->Get(EnvKey(queue_id));
  if (!bytes.ok()) return bytes.status();
  v1::QueueEntry entry;
  if (!entry.ParseFromString(*bytes)) {
    return absl::DataLossError("unreadable envelope record " + queue_id);
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
  if (!Ready().ok()) return;
  SINKLINE_FAILPOINT("done.before_write");
  rocksdb::WriteBatch batch;
  batch.Put(S(DoneKey(queue_id) + binding), rocksdb::Slice());
  if (auto st = store_->Write(batch, /*sync=*/true); !st.ok()) {
    spdlog::error("queue_id={}: binding {} not recorded as finished: {}",
                  queue_id, binding, st.ToString());
    return;
  }
  SINKLINE_FAILPOINT("done.after_write");
}

std::set<std::string> Spool::Finished(const std::string& queue_id) const {
  std::set<std::string> out;
  if (!Ready().ok()) return out;
  const std::string prefix = DoneKey(queue_id);
  store_->Scan(prefix, [&](absl::string_view key, absl::string_view) {
    out.insert(std::string(key.substr(prefix.size())));
    return true;
  });
  return out;
}

absl::Status Spool::WriteHold(const std::string& queue_id,
                              v1::MessageState state,
                              const std::string& reason) const {
  if (auto st = Ready(); !st.ok()) return st;
  SINKLINE_FAILPOINT("hold.before_write");
  rocksdb::WriteBatch batch;
  batch.Put(S(HoldKey(queue_id)),
            S(MessageStateName(state) + "\n" + reason + "\n"));
  auto st = store_->Write(batch, /*sync=*/true);
  SINKLINE_FAILPOINT("hold.after_write");
  return st;
}

std::optional<Spool::Hold> Spool::ReadHold(const std::string& queue_id) const {
  if (!Ready().ok()) return std::nullopt;
  auto text = store_->Get(HoldKey(queue_id));
  if (!text.ok()) return std::nullopt;
  std::vector<std::string> lines = absl::StrSplit(*text, '\n');
  Hold hold;
  hold.reason = lines.size() > 1 ? lines[1] : "";
  hold.state = lines[0] == "held" ? v1::MESSAGE_STATE_HELD
                                  : v1::MESSAGE_STATE_QUARANTINED;
  return hold;
}

void Spool::RemoveHold(const std::string& queue_id) const {
  if (!Ready().ok()) return;
  rocksdb::WriteBatch batch;
  batch.Delete(S(HoldKey(queue_id)));
  (void)store_->Write(batch, /*sync=*/false);
}

std::optional<std::string> Spool::ReadDeliveryState(
    const std::string& queue_id) const {
  if (!Ready().ok()) return std::nullopt;
  auto text = store_->Get(RcptKey(queue_id));
  if (!text.ok()) return std::nullopt;
  return *text;
}

absl::Status Spool::WriteDeliveryState(const std::string& queue_id,
                                       const std::string& text) const {
  if (auto st = Ready(); !st.ok()) return st;
  rocksdb::WriteBatch batch;
  batch.Put(S(RcptKey(queue_id)), S(text));
  return store_->Write(batch, /*sync=*/true);
}

int Spool::DeleteRecords(const std::string& queue_id,
                         rocksdb::WriteBatch& batch) const {
  int n = 0;
  for (const std::string& key : {EnvKey(queue_id), HoldKey(queue_id),
                                 RcptKey(queue_id), FailKey(queue_id)}) {
    if (!store_->Has(key)) continue;  // no needless deletions
    ++n;
    batch.Delete(S(key));
  }
  store_->Scan(DoneKey(queue_id),
               [&](absl::string_view key, absl::string_view) {
                 batch.Delete(rocksdb::Slice(key.data(), key.size()));
                 ++n;
                 return true;
               });
  return n;
}

void Spool::RemoveCommitted(const std::string& queue_id) const {
  if (!Ready().ok()) return;
  rocksdb::WriteBatch batch;
  DeleteRecords(queue_id, batch);
  if (auto st = store_->Write(batch, /*sync=*/false); !st.ok()) {
    // The records stay: a restart submits the message again.
    spdlog::error("queue_id={}: records not removed: {}", queue_id,
                  st.ToString());
    return;
  }
  ::unlink(ContentPath(queue_id).c_str());
}

absl::Status Spool::MoveToFailed(const std::string& queue_id,
                                 const std::string& reason) const {
  if (auto st = Ready(); !st.ok()) return st;
  rocksdb::WriteBatch batch;
  batch.Put(S(FailKey(queue_id)), S(reason));
  if (store_->Has(RcptKey(queue_id))) batch.Delete(S(RcptKey(queue_id)));
  store_->Scan(DoneKey(queue_id),
               [&](absl::string_view key, absl::string_view) {
                 batch.Delete(rocksdb::Slice(key.data(), key.size()));
                 return true;
               });
  return store_->Write(batch, /*sync=*/true);
}

absl::StatusOr<int> Spool::RemoveAll(const std::string& queue_id) const {
  if (auto st = Ready(); !st.ok()) return st;
  rocksdb::WriteBatch batch;
  int removed = DeleteRecords(queue_id, batch);
  if (auto st = store_->Write(batch, /*sync=*/true); !st.ok()) return st;
  std::error_code ec;
  removed += fs::remove(ContentPath(queue_id), ec) ? 1 : 0;
  return removed;
}

absl::Status Spool::RestoreFailed(const std::string& queue_id) const {
  if (auto st = Ready(); !st.ok()) return st;
  if (!store_->Has(FailKey(queue_id)) || !store_->Has(EnvKey(queue_id))) {
    return absl::NotFoundError(
        absl::StrCat("no failed message ", queue_id, " in the spool"));
  }
  rocksdb::WriteBatch batch;
  batch.Delete(S(FailKey(queue_id)));
  return store_->Write(batch, /*sync=*/true);
}

std::vector<v1::QueueEntry> Spool::ListCommitted() const {
  std::vector<v1::QueueEntry> out;
  if (!Ready().ok()) return out;
  std::set<std::string> failed;
  store_->Scan("f/", [&](absl::string_view key, absl::string_view) {
    failed.insert(std::string(key.substr(2)));
    return true;
  });
  store_->Scan("e/", [&](absl::string_view key, absl::string_view value) {
    const std::string id(key.substr(2));
    if (failed.count(id) != 0) return true;
    v1::QueueEntry e;
    if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      spdlog::error("unreadable envelope record {}", id);
      return true;
    }
    out.push_back(std::move(e));
    return true;
  });
  return out;
}

std::vector<Spool::Failed> Spool::ListFailed() const {
  std::vector<Failed> out;
  if (!Ready().ok()) return out;
  store_->Scan("f/", [&](absl::string_view key, absl::string_view value) {
    const std::string id(key.substr(2));
    auto entry = ReadEnvelope(id);
    if (!entry.ok()) return true;
    out.push_back(Failed{std::move(*entry), std::string(value)});
    return true;
  });
  return out;
}

int Spool::RemovePartialCommits() const {
  if (!Ready().ok()) return 0;
  const fs::path dir = fs::path(dir_) / "committed";
  std::set<std::string> recorded;
  store_->Scan("e/", [&](absl::string_view key, absl::string_view) {
    recorded.insert(std::string(key.substr(2)));
    return true;
  });
  std::error_code ec;
  std::set<std::string> with_content;
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const fs::path& path = entry.path();
    const std::string id = IdOf(path);
    const bool content = path.filename().string() == id + ".msg";
    if (content && recorded.count(id) != 0) {
      with_content.insert(id);
      continue;
    }
    if (fs::remove(path, ec)) {
      ++removed;
      spdlog::warn(
          "removed {} from the spool: {}", path.filename().string(),
          content ? "a COMMIT that did not finish" : "an unfinished write");
    }
  }
  if (removed > 0) (void)SyncDirectory(dir.string());
  rocksdb::WriteBatch batch;
  for (const auto& id : recorded) {
    if (with_content.count(id) != 0) continue;
    spdlog::warn(
        "queue_id={}: records without content removed from the spool (the "
        "message was submitted or deleted before the restart)",
        id);
    removed += DeleteRecords(id, batch);
  }
  if (batch.Count() > 0) (void)store_->Write(batch, /*sync=*/true);
  return removed;
}

std::map<std::string, uint64_t> Spool::UpdateGauges() const {
  std::map<std::string, uint64_t> bytes;
  std::map<std::string, uint64_t> messages;
  std::set<std::string> failed;
  if (Ready().ok()) {
    store_->Scan("f/", [&](absl::string_view key, absl::string_view) {
      failed.insert(std::string(key.substr(2)));
      return true;
    });
  }
  std::error_code ec;
  for (const char* dir : {"incoming", "committed"}) {
    for (const auto& entry : fs::directory_iterator(fs::path(dir_) / dir, ec)) {
      std::error_code size_ec;
      const uint64_t size = entry.file_size(size_ec);
      if (size_ec) continue;  // gone meanwhile
      std::string kind = dir;
      if (kind == "committed" && failed.count(IdOf(entry.path())) != 0) {
        kind = "failed";
      }
      bytes[kind] += size;
      // Arriving content has no extension; committed content is <id>.msg.
      const auto ext = entry.path().extension();
      if (ext == ".msg" || (ext.empty() && kind == "incoming")) {
        ++messages[kind];
      }
    }
  }
  uint64_t memtables = 0;
  if (Ready().ok()) {
    bytes["state"] = store_->DiskBytes();
    memtables = store_->MemtableBytes();
  }
  auto& m = MetricsRegistry::Default();
  for (const char* kind : {"incoming", "committed", "failed", "state"}) {
    bytes[kind] += 0;
    m.GetGauge("sinkline_broker_spool_bytes",
               "Bytes in the spool by kind (incoming: arriving; committed: "
               "durable, not yet submitted; failed; state: the store of "
               "records).",
               {{"dir", kind}})
        .Set(static_cast<double>(bytes[kind]));
    if (std::string(kind) == "state") continue;
    m.GetGauge("sinkline_broker_spool_messages",
               "Messages in the spool by kind.", {{"dir", kind}})
        .Set(static_cast<double>(messages[kind]));
  }
  m.GetGauge("sinkline_broker_store_memtable_bytes",
             "Memory of the spool store's memtables (records not yet "
             "flushed to its tables).")
      .Set(static_cast<double>(memtables));
  return bytes;
}

}  // namespace sinkline::broker
