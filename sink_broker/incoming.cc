#include "sink_broker/incoming.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "sink_broker/spool.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/failpoint.h"

namespace sinkline::broker {

namespace {
absl::Status Errno(const std::string& what) { return ErrnoStatus(what, errno); }
}  // namespace

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
  if (auto st = WriteAll(fd_, data); !st.ok()) return st;
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

absl::Status IncomingMessage::Commit(const Spool& spool,
                                     const v1::QueueEntry& entry) {
  SINKLINE_FAILPOINT("commit.content.before_fsync");
  if (::fsync(fd_) != 0) return Errno("fsync " + path_);
  SINKLINE_FAILPOINT("commit.content.after_fsync");
  ::close(fd_);
  fd_ = -1;
  const std::string msg = spool.ContentPath(entry.queue_id());
  // Content first, then the envelope record: recovery treats a message as
  // committed only when its record is in the store.
  if (::rename(path_.c_str(), msg.c_str()) != 0) {
    return Errno("rename " + path_);
  }
  path_ = msg;
  SINKLINE_FAILPOINT("commit.content.after_rename");
  // The content's new name durable before the record that points at it.
  // The old name in incoming/ needs no fsync: should it come back after a
  // crash, Spool::Prepare unlinks it, and the committed name stays.
  if (auto st = SyncDirectory(spool.dir() + "/committed"); !st.ok()) {
    return st;
  }
  SINKLINE_FAILPOINT("commit.envelope.before_write");
  if (auto st = spool.WriteEnvelope(entry); !st.ok()) return st;
  SINKLINE_FAILPOINT("commit.after_durable");
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace sinkline::broker
