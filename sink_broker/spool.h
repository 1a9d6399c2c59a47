// The broker's durable spool. Content arrives in chunks into
// <spool>/incoming/<name>; COMMIT fsyncs it, writes the envelope record
// (a binary sinkline.v1.QueueEntry) beside it, and moves both under
// <spool>/committed/<queue id>.{msg,env}, fsyncing the directories, before
// the client hears 250. After submission both files are removed.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// Unique, time-ordered, unguessable-enough queue id: 10 base-36 digits of
// microseconds since the epoch, then 6 random base-36 digits.
std::string NewQueueId();
// 32 random bytes from OpenSSL's CSPRNG, hex-encoded.
std::string NewToken();

// fsync of a file or directory by path.
absl::Status FsyncPath(const std::string& path);

// Makes the entries of directory `dir` durable (renames and unlinks done
// before the call), sharing fsyncs between concurrent callers: group
// commit. A caller needs an fsync that starts after its call; while one
// runs, later callers wait for it to end and then one of them runs the
// next fsync for all who arrived meanwhile. Concurrent COMMITs thus share
// the directory fsyncs of the spool and of the queue directory.
absl::Status SyncDirectory(const std::string& dir);
// How many directory fsyncs were asked for and how many ran (metrics
// sinkline_broker_dir_syncs_total{what="requested"|"run"}).
struct DirectorySyncStats {
  uint64_t requested = 0;
  uint64_t run = 0;
};
DirectorySyncStats DirectorySyncCounts();
// For tests: runs before each directory fsync, outside the lock.
void SetDirectorySyncHookForTesting(std::function<void()> hook);

// One transaction's content while it arrives.
class IncomingMessage {
 public:
  static absl::StatusOr<std::unique_ptr<IncomingMessage>> Create(
      const std::string& spool_dir, const std::string& name);
  ~IncomingMessage();  // removes the file unless committed

  absl::Status Append(const std::string& data);
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Replaces the content with a rewritten file (content edits before
  // COMMIT).
  absl::Status ReplaceWith(const std::string& new_path, uint64_t new_size);

  // Makes the message durable under `entry.queue_id()`: fsync content, move
  // it to committed/, write and fsync the envelope record beside it, fsync
  // committed/ (shared with concurrent COMMITs).
  absl::Status Commit(const v1::QueueEntry& entry);

 private:
  IncomingMessage(std::string spool_dir, std::string path, int fd);
  const std::string spool_dir_;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  bool committed_ = false;
};

// Paths of a committed message.
std::string CommittedContentPath(const std::string& spool_dir,
                                 const std::string& queue_id);
std::string CommittedEnvelopePath(const std::string& spool_dir,
                                  const std::string& queue_id);

// Creates <spool>/incoming and <spool>/committed; removes partial incoming
// files left by a crash (nothing uncommitted was ever acknowledged).
absl::Status PrepareSpool(const std::string& spool_dir);

// Measures the spool: sets sinkline_broker_spool_bytes{dir} and
// sinkline_broker_spool_messages{dir} for incoming (arriving), committed
// (durable, not yet submitted) and failed. Returns the bytes per directory.
std::map<std::string, uint64_t> UpdateSpoolGauges(const std::string& spool_dir);

// Writes a file atomically: <path>.tmp, fsync, rename, fsync the directory.
absl::Status WriteFileDurably(const std::string& path, const std::string& data);

// What a queue backend did with a message it was handed.
struct SubmitOutcome {
  // Recipients to try again later (the next hop answered 4xx for them);
  // empty when the backend is done with the message.
  std::vector<v1::Recipient> deferred;
  std::string deferred_reason;
  // Recipients refused for good (5xx), each with the next hop's reply.
  std::vector<v1::Recipient> refused;
  std::vector<std::string> refusals;
};

// Where released messages go.
class QueueBackend {
 public:
  virtual ~QueueBackend() = default;
  // Takes the message whose content is at `content_path`, for the
  // recipients in `entry`. OK: the backend took it for every recipient not
  // listed in the outcome. UNAVAILABLE: nothing was taken, try again later.
  // FAILED_PRECONDITION: refused for good, the message says why.
  virtual absl::StatusOr<SubmitOutcome> Submit(
      const v1::QueueEntry& entry, const std::string& content_path) = 0;
  // e.g. "queue-dir /var/spool/sinkline/queue", "smtp-relay mx:25".
  virtual std::string Describe() const = 0;
};

// The spool queue directory: <dir>/tmp/<id> written and fsynced, then
// renamed to <dir>/new/<id>. The file's first line is the QueueEntry as JSON
// (proto field names), then the message bytes exactly.
class QueueDirBackend : public QueueBackend {
 public:
  static absl::StatusOr<std::unique_ptr<QueueDirBackend>> Create(
      const std::string& dir);
  absl::StatusOr<SubmitOutcome> Submit(
      const v1::QueueEntry& entry, const std::string& content_path) override;
  std::string Describe() const override { return "queue-dir " + dir_; }

 private:
  explicit QueueDirBackend(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
};

}  // namespace sinkline::broker
