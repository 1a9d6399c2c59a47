#include "sinkline/common/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"

namespace sinkline {

namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return ErrnoStatus(absl::StrCat(what, " ", path), errno);
}

struct DirSyncState {
  uint64_t started = 0;  // generations begun
  uint64_t done = 0;     // generations ended
  bool running = false;
  absl::Status last;  // status of the latest ended generation
};

class DirectorySyncer {
 public:
  absl::Status Sync(const std::string& dir) {
    static constexpr char kHelp[] =
        "Directory fsyncs asked for (requested) and run (run); concurrent "
        "requests share one.";
    static Counter& requested = MetricsRegistry::Default().GetCounter(
        "sinkline_dir_syncs_total", kHelp, {{"what", "requested"}});
    static Counter& run = MetricsRegistry::Default().GetCounter(
        "sinkline_dir_syncs_total", kHelp, {{"what", "run"}});
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
      SINKLINE_FAILPOINT("dirsync.before");
      absl::Status st = FsyncPath(dir);
      SINKLINE_FAILPOINT("dirsync.after");
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

absl::Status ErrnoStatus(absl::string_view what, int err) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::UnavailableError(message);
}

absl::Status WriteAll(int fd, absl::string_view data) {
  const char* p = data.data();
  size_t n = data.size();
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status FsyncPath(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("fsync", path);
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  return Syncer().Sync(dir);
}

DirectorySyncStats DirectorySyncCounts() { return Syncer().stats(); }

void SetDirectorySyncHookForTesting(std::function<void()> hook) {
  Syncer().set_hook(std::move(hook));
}

absl::Status WriteFileDurably(const std::string& path, absl::string_view data,
                              bool sync) {
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path target(path);
  const std::string tmp =
      (target.parent_path() / absl::StrCat(".", target.filename().string(), ".",
                                           ::getpid(), "-",
                                           counter.fetch_add(1), ".tmp"))
          .string();
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) return Errno("open", tmp);
  absl::Status st = WriteAll(fd, data);
  if (st.ok() && sync && ::fsync(fd) != 0) st = Errno("fsync", tmp);
  if (::close(fd) != 0 && st.ok()) st = Errno("close", tmp);
  if (st.ok()) SINKLINE_FAILPOINT("durable.before_rename");
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = Errno("rename", tmp);
  }
  if (st.ok()) SINKLINE_FAILPOINT("durable.after_rename");
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (!sync) return absl::OkStatus();
  return SyncDirectory(target.parent_path().string());
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace sinkline
