#include "spool.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/util/json_util.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace fs = std::filesystem;

namespace {

constexpr char kBase36[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}

absl::Status WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("write");
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

std::string Dir(const std::string& path) {
  return fs::path(path).parent_path().string();
}

}  // namespace

std::string NewQueueId() {
  uint64_t us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  std::string id(16, '0');
  for (int i = 9; i >= 0; --i) {
    id[i] = kBase36[us % 36];
    us /= 36;
  }
  unsigned char rnd[6];
  RAND_bytes(rnd, sizeof rnd);
  for (int i = 0; i < 6; ++i) id[10 + i] = kBase36[rnd[i] % 36];
  return id;
}

std::string NewToken() {
  unsigned char rnd[32];
  if (RAND_bytes(rnd, sizeof rnd) != 1) std::abort();  // no CSPRNG: no tokens
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(rnd), sizeof rnd));
}

absl::Status FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("fsync " + path);
  return absl::OkStatus();
}

namespace {

struct DirSyncState {
  uint64_t started = 0;  // generations begun
  uint64_t done = 0;     // generations ended
  bool running = false;
  absl::Status last;  // status of the latest ended generation
};

class DirectorySyncer {
 public:
  absl::Status Sync(const std::string& dir) {
    static Counter& requested = MetricsRegistry::Default().GetCounter(
        "sinkline_broker_dir_syncs_total",
        "Directory fsyncs asked for by COMMITs and submissions (requested) "
        "and run (run); concurrent requests share one.",
        {{"what", "requested"}});
    static Counter& run = MetricsRegistry::Default().GetCounter(
        "sinkline_broker_dir_syncs_total",
        "Directory fsyncs asked for by COMMITs and submissions (requested) "
        "and run (run); concurrent requests share one.",
        {{"what", "run"}});
    requested.Inc();
    absl::MutexLock lock(&mu_);
    ++stats_.requested;
    DirSyncState& d = dirs_[dir];
    // The first generation that starts after this call.
    const uint64_t need = d.started + 1;
    while (d.done < need) {
      if (d.running) {
        cv_.Wait(&mu_);
        continue;
      }
      d.running = true;
      const uint64_t gen = ++d.started;
      std::function<void()> hook = hook_;
      mu_.Unlock();
      if (hook) hook();
      absl::Status st = FsyncPath(dir);
      mu_.Lock();
      d.running = false;
      d.done = gen;
      d.last = st;
      ++stats_.run;
      run.Inc();
      cv_.SignalAll();
    }
    return d.last;
  }

  void set_hook(std::function<void()> hook) {
    absl::MutexLock lock(&mu_);
    hook_ = std::move(hook);
  }

  DirectorySyncStats stats() {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::map<std::string, DirSyncState> dirs_ ABSL_GUARDED_BY(mu_);
  DirectorySyncStats stats_ ABSL_GUARDED_BY(mu_);
  std::function<void()> hook_ ABSL_GUARDED_BY(mu_);
};

DirectorySyncer& Syncer() {
  static DirectorySyncer* syncer = new DirectorySyncer;
  return *syncer;
}

}  // namespace

absl::Status SyncDirectory(const std::string& dir) {
  return Syncer().Sync(dir);
}

DirectorySyncStats DirectorySyncCounts() { return Syncer().stats(); }

void SetDirectorySyncHookForTesting(std::function<void()> hook) {
  Syncer().set_hook(std::move(hook));
}

std::map<std::string, uint64_t> UpdateSpoolGauges(
    const std::string& spool_dir) {
  std::map<std::string, uint64_t> bytes;
  for (const char* dir : {"incoming", "committed", "failed"}) {
    uint64_t total = 0;
    uint64_t messages = 0;
    std::error_code ec;
    for (const auto& entry :
         fs::directory_iterator(fs::path(spool_dir) / dir, ec)) {
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

absl::Status WriteFileDurably(const std::string& path,
                              const std::string& data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return Errno("open " + tmp);
  absl::Status st = WriteAll(fd, data.data(), data.size());
  if (st.ok() && ::fsync(fd) != 0) st = Errno("fsync " + tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = Errno("rename " + tmp);
  }
  if (st.ok()) st = SyncDirectory(Dir(path));
  return st;
}

std::string CommittedContentPath(const std::string& spool_dir,
                                 const std::string& queue_id) {
  return absl::StrCat(spool_dir, "/committed/", queue_id, ".msg");
}

std::string CommittedEnvelopePath(const std::string& spool_dir,
                                  const std::string& queue_id) {
  return absl::StrCat(spool_dir, "/committed/", queue_id, ".env");
}

absl::Status PrepareSpool(const std::string& spool_dir) {
  std::error_code ec;
  for (const char* sub : {"incoming", "committed", "failed"}) {
    fs::create_directories(fs::path(spool_dir) / sub, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("cannot create ", spool_dir,
                                                 "/", sub, ": ", ec.message()));
    }
  }
  for (const auto& entry :
       fs::directory_iterator(fs::path(spool_dir) / "incoming", ec)) {
    fs::remove(entry.path(), ec);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<IncomingMessage>> IncomingMessage::Create(
    const std::string& spool_dir, const std::string& name) {
  std::string path = absl::StrCat(spool_dir, "/incoming/", name);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return Errno("open " + path);
  return std::unique_ptr<IncomingMessage>(
      new IncomingMessage(spool_dir, std::move(path), fd));
}

IncomingMessage::IncomingMessage(std::string spool_dir, std::string path,
                                 int fd)
    : spool_dir_(std::move(spool_dir)), path_(std::move(path)), fd_(fd) {}

IncomingMessage::~IncomingMessage() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(path_.c_str());
}

absl::Status IncomingMessage::Append(const std::string& data) {
  if (auto st = WriteAll(fd_, data.data(), data.size()); !st.ok()) return st;
  size_ += data.size();
  return absl::OkStatus();
}

absl::Status IncomingMessage::ReplaceWith(const std::string& new_path,
                                          uint64_t new_size) {
  if (::rename(new_path.c_str(), path_.c_str()) != 0) {
    return Errno("rename " + new_path);
  }
  ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) return Errno("open " + path_);
  size_ = new_size;
  return absl::OkStatus();
}

absl::Status IncomingMessage::Commit(const v1::QueueEntry& entry) {
  if (::fsync(fd_) != 0) return Errno("fsync " + path_);
  ::close(fd_);
  fd_ = -1;
  std::string record;
  entry.SerializeToString(&record);
  const std::string env = CommittedEnvelopePath(spool_dir_, entry.queue_id());
  const std::string msg = CommittedContentPath(spool_dir_, entry.queue_id());
  // Content first, then the envelope record: recovery treats a message as
  // committed only when its .env exists.
  if (::rename(path_.c_str(), msg.c_str()) != 0)
    return Errno("rename " + path_);
  path_ = msg;
  // The envelope record's directory fsync also makes the content's new name
  // durable. The old name in incoming/ needs no fsync: should it come back
  // after a crash, PrepareSpool unlinks it, and the committed name stays.
  if (auto st = WriteFileDurably(env, record); !st.ok()) return st;
  committed_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<QueueDirBackend>> QueueDirBackend::Create(
    const std::string& dir) {
  std::error_code ec;
  for (const char* sub : {"tmp", "new"}) {
    fs::create_directories(fs::path(dir) / sub, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create ", dir, "/", sub, ": ", ec.message()));
    }
  }
  return std::unique_ptr<QueueDirBackend>(new QueueDirBackend(dir));
}

absl::StatusOr<SubmitOutcome> QueueDirBackend::Submit(
    const v1::QueueEntry& entry, const std::string& content_path) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (auto st = google::protobuf::util::MessageToJsonString(entry, &json, opts);
      !st.ok()) {
    return absl::InternalError(std::string(st.message()));
  }
  const std::string tmp = absl::StrCat(dir_, "/tmp/", entry.queue_id());
  const std::string dst = absl::StrCat(dir_, "/new/", entry.queue_id());
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) return Errno("open " + tmp);
  int in = ::open(content_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    ::close(out);
    return Errno("open " + content_path);
  }
  json += "\n";
  absl::Status st = WriteAll(out, json.data(), json.size());
  char buf[65536];
  while (st.ok()) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) st = Errno("read " + content_path);
    if (n <= 0) break;
    st = WriteAll(out, buf, static_cast<size_t>(n));
  }
  if (st.ok() && ::fsync(out) != 0) st = Errno("fsync " + tmp);
  ::close(in);
  ::close(out);
  if (st.ok() && ::rename(tmp.c_str(), dst.c_str()) != 0) {
    st = Errno("rename " + tmp);
  }
  if (st.ok()) st = SyncDirectory(dir_ + "/new");
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SubmitOutcome{};
}

}  // namespace sinkline::broker
