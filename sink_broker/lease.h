// Leases: the right of one binding's invocation to touch one message. The
// message is submitted only when its chain is over and none of its leases is
// active (THE INVARIANT). Each lease reads a snapshot of the content (an
// open file of the version current when it was granted), stages its writes,
// and publishes them atomically when it ends normally; a lease that fails or
// expires leaves no partial write.
#pragma once

#include <sys/types.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/message_edit.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

class LeaseTable;
class SnapshotFile;

// A message as leases see it: where its content is, its envelope, and who
// still holds it.
class MessageRecord {
 public:
  using ApplyEdits =
      std::function<absl::Status(const std::vector<v1::ContentEdit>&)>;

  MessageRecord(std::string path, ApplyEdits apply)
      : path_(std::move(path)), apply_(std::move(apply)) {}

  // The content path (changes at COMMIT: a new version).
  void set_path(std::string p) {
    absl::MutexLock lock(&mu_);
    path_ = std::move(p);
    ++content_version_;
  }
  std::string path() const {
    absl::MutexLock lock(&mu_);
    return path_;
  }
  void set_queue_id(std::string id) {
    absl::MutexLock lock(&mu_);
    queue_id_ = std::move(id);
  }
  std::string queue_id() const {
    absl::MutexLock lock(&mu_);
    return queue_id_;
  }

  // Envelope edits staged by leases are applied here when they publish.
  v1::Envelope envelope() const {
    absl::MutexLock lock(&mu_);
    return envelope_;
  }
  void set_envelope(v1::Envelope e) {
    absl::MutexLock lock(&mu_);
    envelope_ = std::move(e);
  }
  bool envelope_edited() const {
    absl::MutexLock lock(&mu_);
    return envelope_edited_;
  }

  // The chain is over; `ready` runs once no lease is active (maybe now).
  void ChainDone(std::function<void()> ready);
  // Held for an operator (a lease expired under the hold policy).
  bool held() const {
    absl::MutexLock lock(&mu_);
    return held_;
  }
  int active_leases() const {
    absl::MutexLock lock(&mu_);
    return active_;
  }
  // Runs `go` when no read-write lease is active (maybe now): writers take
  // turns in priority order.
  void WhenNoWriter(std::function<void()> go);
  // Shutdown: forgets what waits for the leases to end (it may hold this
  // record, a cycle that would outlive the broker).
  void DropWaiters();

  // Opens the current content version: the snapshot a lease reads, with
  // the version's number. Never between a publication's new file and its
  // new number.
  absl::StatusOr<std::shared_ptr<SnapshotFile>> OpenSnapshot();
  // The content changed under the same path (a lease published its edits):
  // snapshots opened from now on are a new version.
  void ContentChanged() {
    absl::MutexLock lock(&mu_);
    ++content_version_;
  }

  // The index of the header block (fields, their raw bytes, where the body
  // starts) of the content version of `snapshot`. Parsed once per version
  // and shared by every lease that reads that version; the key is the
  // record's own version number, never what the file system says (an inode
  // number and a size come back for other bytes). The block is read up to
  // `max_header_bytes`.
  absl::StatusOr<std::shared_ptr<const ParsedHeader>> HeaderIndex(
      const SnapshotFile& snapshot, size_t max_header_bytes = 1 << 20);
  // How many times a header block was parsed (for tests and metrics).
  int header_index_builds() const {
    absl::MutexLock lock(&mu_);
    return index_builds_;
  }

 private:
  friend class LeaseTable;
  mutable absl::Mutex mu_;
  std::string path_ ABSL_GUARDED_BY(mu_);
  std::string queue_id_ ABSL_GUARDED_BY(mu_);
  v1::Envelope envelope_ ABSL_GUARDED_BY(mu_);
  bool envelope_edited_ ABSL_GUARDED_BY(mu_) = false;
  ApplyEdits apply_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int active_writers_ ABSL_GUARDED_BY(mu_) = 0;
  bool chain_done_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> ready_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> writer_waiters_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> tokens_ ABSL_GUARDED_BY(mu_);
  // Bumped by every new content version (COMMIT's path, a publication).
  uint64_t content_version_ ABSL_GUARDED_BY(mu_) = 1;
  // The version index_ is of (0: none).
  uint64_t index_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const ParsedHeader> index_ ABSL_GUARDED_BY(mu_);
  int index_builds_ ABSL_GUARDED_BY(mu_) = 0;
  // Serialises publication of edits to the files.
  absl::Mutex publish_mu_;
};

// An open descriptor that closes when its last holder lets go: a lease's
// snapshot. Readers keep a reference for as long as they read, so a lease
// that ends meanwhile never closes a descriptor under them (and its number
// cannot be reused for another file while they hold it).
class SnapshotFile {
 public:
  // `version`: the record's content version the file holds.
  // Counted in MessageDescriptors while open.
  explicit SnapshotFile(int fd, uint64_t version = 0);
  ~SnapshotFile();
  SnapshotFile(const SnapshotFile&) = delete;
  SnapshotFile& operator=(const SnapshotFile&) = delete;
  int fd() const { return fd_; }
  uint64_t version() const { return version_; }

 private:
  const int fd_;
  const uint64_t version_;
};

struct Lease {
  enum class State { kActive, kReleased, kExpired, kFailed };

  // The snapshot, or null once the lease ended.
  std::shared_ptr<SnapshotFile> snapshot() const {
    absl::MutexLock lock(&mu);
    return file;
  }
  State current_state() const {
    absl::MutexLock lock(&mu);
    return state;
  }

  std::string token;
  std::string id;  // shown to operators instead of the token
  std::string binding;
  v1::ContentAccess access = v1::CONTENT_ACCESS_NONE;
  v1::ExpiryPolicy expiry_policy = v1::EXPIRY_POLICY_RELEASE;
  std::chrono::system_clock::time_point expires;
  std::chrono::system_clock::time_point max_expires;
  std::shared_ptr<MessageRecord> message;
  // The lease's own state: every change of it (a write staged, a renewal,
  // release with its publication, expiry, failure) happens under `mu`, and
  // only an active lease changes; whoever moves it out of kActive ends it.
  mutable absl::Mutex mu;
  std::shared_ptr<SnapshotFile> file ABSL_GUARDED_BY(mu);
  State state ABSL_GUARDED_BY(mu) = State::kActive;
  std::vector<v1::ContentEdit> staged_content ABSL_GUARDED_BY(mu);
  std::vector<v1::EnvelopeEdit> staged_envelope ABSL_GUARDED_BY(mu);
  // The encoded size of what is staged (LeaseLimits).
  uint64_t staged_bytes ABSL_GUARDED_BY(mu) = 0;
  std::unique_ptr<boost::asio::steady_timer> timer ABSL_GUARDED_BY(mu);
  // Called once when the lease ends, with how it ended.
  std::function<void(State)> on_end;
};

// What one lease may stage before it ends (issue 15): without a bound a
// sink could make the broker keep any number of edits, of any size, in
// memory. Past either limit a staging call is refused with
// RESOURCE_EXHAUSTED and stages nothing (counted in
// sinkline_lease_staged_refused_total{binding,limit}); what the lease
// staged before stays, and is published (or dropped) whole.
struct LeaseLimits {
  // Edits (header edits, body replacements, range writes, envelope edits)
  // staged by one lease (--lease-max-staged-edits; 0: no limit).
  size_t max_staged_edits = 1000;
  // Their encoded size in bytes (--lease-max-staged-bytes; 0: no limit).
  uint64_t max_staged_bytes = 80ull << 20;
};

class LeaseTable {
 public:
  explicit LeaseTable(boost::asio::thread_pool& pool,
                      LeaseLimits limits = LeaseLimits())
      : pool_(pool), limits_(limits) {}
  ~LeaseTable();

  const LeaseLimits& limits() const { return limits_; }

  // Grants a lease on `message` for `binding`, expiring after `ttl`
  // (renewable up to `max_ttl`).
  absl::StatusOr<std::shared_ptr<Lease>> Grant(
      std::shared_ptr<MessageRecord> message, const v1::Binding& binding,
      std::chrono::milliseconds ttl, std::chrono::milliseconds max_ttl);

  // Finds an active lease by token; errors say what happened: NOT_FOUND,
  // FAILED_PRECONDITION "message released" / "lease expired" / "lease
  // released".
  absl::StatusOr<std::shared_ptr<Lease>> Find(const std::string& token);

  // Stages edits under a read-write lease (PERMISSION_DENIED otherwise;
  // RESOURCE_EXHAUSTED past the lease's limits, staging nothing).
  absl::Status StageContent(const std::string& token, v1::ContentEdit edit);
  absl::Status StageEnvelope(const std::string& token, v1::EnvelopeEdit edit);
  // Stages all of `content` and `envelope` or, when one is invalid or they
  // do not fit in the lease's limits, none of them.
  absl::Status Stage(const std::string& token,
                     std::vector<v1::ContentEdit> content,
                     std::vector<v1::EnvelopeEdit> envelope);

  // Ends a lease normally: its staged writes (plus `more`) become visible
  // atomically, unless `discard`.
  absl::Status Release(const std::string& token, bool discard,
                       const std::vector<v1::ContentEdit>& more_content = {},
                       const std::vector<v1::EnvelopeEdit>& more_envelope = {});
  // Ends a lease whose sink failed: no partial write.
  void Fail(const std::string& token);
  // Pushes the expiry out, up to the maximum.
  absl::StatusOr<std::chrono::system_clock::time_point> Renew(
      const std::string& token, std::chrono::milliseconds extend);

  // After submission: later calls with the message's tokens get
  // FAILED_PRECONDITION "message released".
  void MessageReleased(MessageRecord& message);

  // Cancels every expiry timer (shutdown).
  void CancelTimers();

  std::vector<v1::LeaseInfo> List();
  size_t active() const;

 private:
  // The lease's end after its state left kActive (under its lock, by the
  // caller): out of the table, snapshot let go, the message told.
  void End(const std::shared_ptr<Lease>& lease, Lease::State how);
  void Expire(const std::string& token);
  // The active lease for `token`, or why there is none.
  absl::StatusOr<std::shared_ptr<Lease>> Lookup(const std::string& token);
  static absl::Status NotActive(Lease::State state);
  void ArmTimer(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease.mu);

  boost::asio::thread_pool& pool_;
  const LeaseLimits limits_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Lease>> leases_ ABSL_GUARDED_BY(mu_);
  // Tokens of ended leases and released messages, bounded.
  std::map<std::string, std::string> ended_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ended_order_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sinkline::broker
