// A spool in the layout before the store (records as files beside the
// content) taken over at start: committed/<id>.env with its .done, .hold and
// .rcpt, and failed/<id>.{msg,env,reason}, become the store's records (and
// the failed content moves to committed/), in durable batches; only then
// do the old record files go. A crash in between imports again (the same
// keys, the same values).
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sink_broker/spool.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {
namespace fs = std::filesystem;

namespace {

// Messages per batch: bounds the memory of one import step.
constexpr int kBatchMessages = 1000;

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

}  // namespace

absl::Status Spool::ImportOldLayout() const {
  const fs::path committed = fs::path(dir_) / "committed";
  const fs::path failed = fs::path(dir_) / "failed";
  struct Old {
    std::string id;
    bool failed;
  };
  std::vector<Old> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(committed, ec)) {
    if (e.path().extension() == ".env") {
      found.push_back({e.path().stem().string(), false});
    }
  }
  for (const auto& e : fs::directory_iterator(failed, ec)) {
    if (e.path().extension() == ".env") {
      found.push_back({e.path().stem().string(), true});
    }
  }
  if (found.empty()) {
    fs::remove(failed, ec);  // an empty failed/ of the old layout
    return absl::OkStatus();
  }
  int imported = 0, unreadable = 0;
  for (size_t start = 0; start < found.size(); start += kBatchMessages) {
    const size_t end = std::min(found.size(), start + kBatchMessages);
    rocksdb::WriteBatch batch;
    std::vector<std::string> old_files;
    bool moved = false;
    for (size_t i = start; i < end; ++i) {
      const std::string& id = found[i].id;
      const fs::path base = found[i].failed ? failed : committed;
      const std::string env = (base / (id + ".env")).string();
      const std::string bytes = ReadWholeFile(env);
      v1::QueueEntry entry;
      if (!entry.ParseFromString(bytes) || entry.queue_id() != id) {
        spdlog::error("unreadable envelope record {}: not imported", env);
        ++unreadable;
        continue;
      }
      batch.Put("e/" + id, bytes);
      old_files.push_back(env);
      if (found[i].failed) {
        const fs::path content = failed / (id + ".msg");
        if (fs::exists(content, ec)) {
          fs::rename(content, ContentPath(id), ec);
          if (ec) {
            return absl::UnavailableError(absl::StrCat(
                "cannot move ", content.string(), ": ", ec.message()));
          }
          moved = true;
        }
        const std::string reason = (failed / (id + ".reason")).string();
        batch.Put("f/" + id, Trimmed(ReadWholeFile(reason)));
        old_files.push_back(reason);
      } else {
        const std::string done = Committed(id, ".done");
        std::ifstream in(done);
        for (std::string line; std::getline(in, line);) {
          if (!line.empty()) batch.Put(absl::StrCat("d/", id, "/", line), "");
        }
        for (const char* ext : {".hold", ".rcpt"}) {
          const std::string path = Committed(id, ext);
          if (::access(path.c_str(), F_OK) != 0) continue;
          batch.Put(absl::StrCat(ext[1] == 'h' ? "h/" : "r/", id),
                    ReadWholeFile(path));
          old_files.push_back(path);
        }
        old_files.push_back(done);
      }
      ++imported;
    }
    if (moved) {
      if (auto st = SyncDirectory(committed.string()); !st.ok()) return st;
    }
    if (auto st = store_->Write(batch, /*sync=*/true); !st.ok()) return st;
    for (const auto& path : old_files) ::unlink(path.c_str());
  }
  (void)SyncDirectory(committed.string());
  if (unreadable == 0) fs::remove(failed, ec);
  spdlog::warn(
      "spool in the old layout: {} messages' records imported into the store "
      "({} unreadable left)",
      imported, unreadable);
  return absl::OkStatus();
}

}  // namespace sinkline::broker
