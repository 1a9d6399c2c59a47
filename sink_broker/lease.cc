#include "sink_broker/lease.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "sink_broker/descriptors.h"
#include "sink_broker/ids.h"
#include "sink_broker/message_edit.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

namespace {

constexpr size_t kMaxEnded = 200000;

}  // namespace

void MessageRecord::ChainDone(std::function<void()> ready) {
  {
    absl::MutexLock lock(&mu_);
    chain_done_ = true;
    if (active_ > 0) {
      ready_ = std::move(ready);
      return;
    }
  }
  ready();
}

void MessageRecord::DropWaiters() {
  std::function<void()> ready;
  std::deque<std::function<void()>> writers;
  {
    absl::MutexLock lock(&mu_);
    ready.swap(ready_);
    writers.swap(writer_waiters_);
  }
  // Destroyed outside the lock: they may hold the last reference to this.
}

void MessageRecord::WhenNoWriter(std::function<void()> go) {
  {
    absl::MutexLock lock(&mu_);
    if (active_writers_ > 0) {
      writer_waiters_.push_back(std::move(go));
      return;
    }
  }
  go();
}

SnapshotFile::SnapshotFile(int fd, uint64_t version)
    : fd_(fd), version_(version) {
  if (fd_ >= 0) MessageDescriptors::Default().Add();
}

SnapshotFile::~SnapshotFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    MessageDescriptors::Default().Remove();
  }
}

LeaseTable::~LeaseTable() {
  // Shutdown with leases still active: their messages stay in the spool for
  // the next start, and what waits on them (the submission, writers taking
  // turns, which hold the message themselves) is dropped with them.
  std::vector<std::shared_ptr<MessageRecord>> messages;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [token, lease] : leases_) {
      absl::MutexLock l(&lease->mu);
      lease->file.reset();
      if (lease->message) messages.push_back(lease->message);
    }
  }
  for (auto& m : messages) m->DropWaiters();
}

absl::Status LeaseTable::NotActive(Lease::State state) {
  switch (state) {
    case Lease::State::kExpired:
      return absl::FailedPreconditionError("lease expired");
    case Lease::State::kFailed:
      return absl::FailedPreconditionError(
          "lease ended: the sink's call failed");
    case Lease::State::kReleased:
      return absl::FailedPreconditionError("lease released");
    case Lease::State::kActive:
      break;
  }
  return absl::OkStatus();
}

void LeaseTable::ArmTimer(Lease& lease) {
  lease.timer->expires_at(std::chrono::steady_clock::now() +
                          (lease.expires - std::chrono::system_clock::now()));
  lease.timer->async_wait(
      [this, token = lease.token](const boost::system::error_code& ec) {
        if (!ec) Expire(token);
      });
}

absl::StatusOr<std::shared_ptr<Lease>> LeaseTable::Grant(
    std::shared_ptr<MessageRecord> message, const v1::Binding& binding,
    std::chrono::milliseconds ttl, std::chrono::milliseconds max_ttl) {
  auto lease = std::make_shared<Lease>();
  auto snapshot = message->OpenSnapshot();
  if (!snapshot.ok()) return snapshot.status();
  {
    absl::MutexLock l(&lease->mu);
    lease->file = std::move(*snapshot);
    lease->timer = std::make_unique<asio::steady_timer>(pool_);
  }
  lease->token = NewToken();
  lease->binding = binding.name();
  lease->access = binding.content_access();
  lease->expiry_policy = binding.expiry_policy();
  const auto now = std::chrono::system_clock::now();
  lease->expires = now + ttl;
  lease->max_expires = now + std::max(ttl, max_ttl);
  lease->message = message;
  {
    absl::MutexLock lock(&message->mu_);
    ++message->active_;
    if (lease->access == v1::CONTENT_ACCESS_READ_WRITE) {
      ++message->active_writers_;
    }
    message->tokens_.push_back(lease->token);
  }
  {
    absl::MutexLock lock(&mu_);
    lease->id = absl::StrCat("L", ++next_id_);
    leases_[lease->token] = lease;
  }
  MetricsRegistry::Default()
      .GetGauge("sinkline_leases_active", "Leases now active.")
      .Add(1);
  // Armed once the lease is in the table, where its expiry looks for it.
  absl::MutexLock l(&lease->mu);
  if (lease->state == Lease::State::kActive) ArmTimer(*lease);
  return lease;
}

absl::StatusOr<std::shared_ptr<Lease>> LeaseTable::Lookup(
    const std::string& token) {
  absl::MutexLock lock(&mu_);
  if (auto it = leases_.find(token); it != leases_.end()) return it->second;
  if (auto it = ended_.find(token); it != ended_.end()) {
    return absl::FailedPreconditionError(it->second);
  }
  return absl::NotFoundError("unknown lease token");
}

absl::StatusOr<std::shared_ptr<Lease>> LeaseTable::Find(
    const std::string& token) {
  auto lease = Lookup(token);
  if (!lease.ok()) return lease.status();
  // Ending (its state changed, End not done yet): already not active.
  if (auto st = NotActive((*lease)->current_state()); !st.ok()) return st;
  return lease;
}

absl::Status LeaseTable::StageContent(const std::string& token,
                                      v1::ContentEdit edit) {
  std::vector<v1::ContentEdit> one;
  one.push_back(std::move(edit));
  return Stage(token, std::move(one), {});
}

absl::Status LeaseTable::StageEnvelope(const std::string& token,
                                       v1::EnvelopeEdit edit) {
  std::vector<v1::EnvelopeEdit> one;
  one.push_back(std::move(edit));
  return Stage(token, {}, std::move(one));
}

absl::Status LeaseTable::Stage(const std::string& token,
                               std::vector<v1::ContentEdit> content,
                               std::vector<v1::EnvelopeEdit> envelope) {
  for (const auto& e : content) {
    if (auto st = ValidateEdit(e); !st.ok()) return st;
  }
  auto lease = Lookup(token);
  if (!lease.ok()) return lease.status();
  Lease& l = **lease;
  if (l.access != v1::CONTENT_ACCESS_READ_WRITE) {
    return absl::PermissionDeniedError(
        content.empty()
            ? "read lease: envelope edits need content_access read-write"
            : "read lease: writes need content_access read-write");
  }
  if (!envelope.empty()) {
    // The same grammar as verdict edits and the edge (message_edit.h).
    const bool utf8 = EnvelopeIsUtf8(l.message->envelope());
    for (const auto& e : envelope) {
      if (auto st = ValidateEnvelopeEdit(e, utf8); !st.ok()) return st;
    }
  }
  uint64_t bytes = 0;
  for (const auto& e : content) bytes += e.ByteSizeLong();
  for (const auto& e : envelope) bytes += e.ByteSizeLong();
  const size_t edits = content.size() + envelope.size();
  absl::MutexLock lock(&l.mu);
  if (auto st = NotActive(l.state); !st.ok()) return st;
  const size_t staged = l.staged_content.size() + l.staged_envelope.size();
  const char* limit = nullptr;
  std::string why;
  if (limits_.max_staged_edits > 0 &&
      staged + edits > limits_.max_staged_edits) {
    limit = "edits";
    why = absl::StrCat("this lease has ", staged, " edits staged; at most ",
                       limits_.max_staged_edits,
                       " (--lease-max-staged-edits): release the lease to "
                       "publish them");
  } else if (limits_.max_staged_bytes > 0 &&
             l.staged_bytes + bytes > limits_.max_staged_bytes) {
    limit = "bytes";
    why = absl::StrCat("this lease has ", l.staged_bytes,
                       " bytes of edits staged; ", bytes, " more would pass ",
                       limits_.max_staged_bytes, " (--lease-max-staged-bytes)");
  }
  if (limit != nullptr) {
    MetricsRegistry::Default()
        .GetCounter("sinkline_lease_staged_refused_total",
                    "Staging calls refused because the lease reached "
                    "--lease-max-staged-edits or --lease-max-staged-bytes.",
                    {{"binding", l.binding}, {"limit", limit}})
        .Inc();
    return absl::ResourceExhaustedError(why);
  }
  for (auto& e : content) l.staged_content.push_back(std::move(e));
  for (auto& e : envelope) l.staged_envelope.push_back(std::move(e));
  l.staged_bytes += bytes;
  return absl::OkStatus();
}

absl::Status LeaseTable::Release(
    const std::string& token, bool discard,
    const std::vector<v1::ContentEdit>& more_content,
    const std::vector<v1::EnvelopeEdit>& more_envelope) {
  auto found = Lookup(token);
  if (!found.ok()) return found.status();
  std::shared_ptr<Lease> lease = std::move(*found);
  absl::Status published;
  Lease::State how;
  {
    // Publication and the end of the lease are one step: an expiry, a
    // failure or a second release waits for it and then finds the lease
    // no longer active; one that came first leaves nothing to publish.
    absl::MutexLock l(&lease->mu);
    if (auto st = NotActive(lease->state); !st.ok()) return st;
    if (std::chrono::system_clock::now() >= lease->expires) {
      // Its time is up even if the timer has not fired yet: the expiry
      // ends it, and its writes are dropped.
      return absl::FailedPreconditionError("lease expired");
    }
    if (!discard) {
      std::vector<v1::ContentEdit> content = lease->staged_content;
      std::vector<v1::EnvelopeEdit> envelope = lease->staged_envelope;
      content.insert(content.end(), more_content.begin(), more_content.end());
      envelope.insert(envelope.end(), more_envelope.begin(),
                      more_envelope.end());
      MessageRecord& m = *lease->message;
      absl::MutexLock publish(&m.publish_mu_);
      if (!content.empty()) {
        published = m.apply_(content);
        m.ContentChanged();  // even a failed publication may have moved
      }
      if (published.ok() && !envelope.empty()) {
        absl::MutexLock lock(&m.mu_);
        google::protobuf::RepeatedPtrField<v1::EnvelopeEdit> edits(
            envelope.begin(), envelope.end());
        if (ApplyEnvelopeEdits(edits, m.envelope_)) m.envelope_edited_ = true;
      }
    }
    how = published.ok() ? Lease::State::kReleased : Lease::State::kFailed;
    lease->state = how;
  }
  End(lease, how);
  return published;
}

void LeaseTable::Fail(const std::string& token) {
  auto lease = Lookup(token);
  if (!lease.ok()) return;
  {
    absl::MutexLock l(&(*lease)->mu);
    if ((*lease)->state != Lease::State::kActive) return;
    (*lease)->state = Lease::State::kFailed;
  }
  End(*lease, Lease::State::kFailed);
}

absl::StatusOr<std::chrono::system_clock::time_point> LeaseTable::Renew(
    const std::string& token, std::chrono::milliseconds extend) {
  auto lease = Lookup(token);
  if (!lease.ok()) return lease.status();
  Lease& l = **lease;
  absl::MutexLock lock(&l.mu);
  if (auto st = NotActive(l.state); !st.ok()) return st;
  const auto wanted = std::chrono::system_clock::now() + extend;
  l.expires = std::min(wanted, l.max_expires);
  ArmTimer(l);
  return l.expires;
}

void LeaseTable::Expire(const std::string& token) {
  auto found = Lookup(token);
  if (!found.ok()) return;
  std::shared_ptr<Lease> lease = std::move(*found);
  {
    absl::MutexLock l(&lease->mu);
    if (lease->state != Lease::State::kActive) return;
    if (std::chrono::system_clock::now() < lease->expires) return;  // renewed
    lease->state = Lease::State::kExpired;
  }
  const bool hold = lease->expiry_policy == v1::EXPIRY_POLICY_HOLD;
  MetricsRegistry::Default()
      .GetCounter("sinkline_leases_expired_total",
                  "Leases that expired, by binding.",
                  {{"binding", lease->binding}})
      .Inc();
  spdlog::warn("lease {} of binding={} on queue_id={} expired; {}", lease->id,
               lease->binding, lease->message->queue_id(),
               hold ? "message held for an operator"
                    : "its writes are dropped and the message goes on");
  if (hold) {
    absl::MutexLock lock(&lease->message->mu_);
    lease->message->held_ = true;
  }
  End(lease, Lease::State::kExpired);
}

void LeaseTable::End(const std::shared_ptr<Lease>& lease, Lease::State how) {
  {
    absl::MutexLock lock(&mu_);
    if (leases_.erase(lease->token) == 0) return;  // already ended
    ended_[lease->token] = std::string(NotActive(how).message());
    ended_order_.push_back(lease->token);
    while (ended_order_.size() > kMaxEnded) {
      ended_.erase(ended_order_.front());
      ended_order_.pop_front();
    }
  }
  {
    absl::MutexLock l(&lease->mu);
    lease->staged_content.clear();
    lease->staged_envelope.clear();
    lease->staged_bytes = 0;
    lease->timer->cancel();
    // Readers that took the snapshot keep it open until they are done.
    lease->file.reset();
  }
  if (lease->on_end) lease->on_end(how);
  MetricsRegistry::Default()
      .GetGauge("sinkline_leases_active", "Leases now active.")
      .Add(-1);
  MessageRecord& m = *lease->message;
  std::function<void()> ready, next_writer;
  {
    absl::MutexLock lock(&m.mu_);
    --m.active_;
    if (lease->access == v1::CONTENT_ACCESS_READ_WRITE &&
        --m.active_writers_ == 0 && !m.writer_waiters_.empty()) {
      next_writer = std::move(m.writer_waiters_.front());
      m.writer_waiters_.pop_front();
    }
    if (m.active_ == 0 && m.chain_done_ && m.ready_) {
      ready = std::move(m.ready_);
      m.ready_ = nullptr;
    }
  }
  if (next_writer) asio::post(pool_, std::move(next_writer));
  if (ready) asio::post(pool_, std::move(ready));
}

void LeaseTable::MessageReleased(MessageRecord& message) {
  std::vector<std::string> tokens;
  {
    absl::MutexLock lock(&message.mu_);
    tokens = message.tokens_;
  }
  absl::MutexLock lock(&mu_);
  for (const auto& t : tokens) {
    auto it = ended_.find(t);
    if (it == ended_.end()) {
      ended_order_.push_back(t);
      ended_[t] = "message released";
    } else if (it->second == "lease expired") {
      // The sink's own lease ran out first: that is what it needs to hear.
      it->second = "lease expired; the message has been released since";
    } else {
      it->second = "message released";
    }
  }
}

void LeaseTable::CancelTimers() {
  absl::MutexLock lock(&mu_);
  for (auto& [token, lease] : leases_) {
    absl::MutexLock l(&lease->mu);
    lease->timer->cancel();
  }
}

std::vector<v1::LeaseInfo> LeaseTable::List() {
  std::vector<v1::LeaseInfo> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [token, l] : leases_) {
    v1::LeaseInfo info;
    info.set_id(l->id);
    info.set_queue_id(l->message->queue_id());
    info.set_binding(l->binding);
    info.set_access(l->access);
    absl::MutexLock ll(&l->mu);
    info.mutable_expires()->set_seconds(
        std::chrono::duration_cast<std::chrono::seconds>(
            l->expires.time_since_epoch())
            .count());
    out.push_back(std::move(info));
  }
  return out;
}

size_t LeaseTable::active() const {
  absl::MutexLock lock(&mu_);
  return leases_.size();
}

absl::StatusOr<std::shared_ptr<SnapshotFile>> MessageRecord::OpenSnapshot() {
  // A publication holds publish_mu_ from its new file to its new number.
  absl::MutexLock publish(&publish_mu_);
  const std::string p = path();
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot open ", p));
  absl::MutexLock lock(&mu_);
  return std::make_shared<SnapshotFile>(fd, content_version_);
}

absl::StatusOr<std::shared_ptr<const ParsedHeader>> MessageRecord::HeaderIndex(
    const SnapshotFile& snapshot, size_t max_header_bytes) {
  const int fd = snapshot.fd();
  const uint64_t version = snapshot.version();
  {
    absl::MutexLock lock(&mu_);
    if (index_ != nullptr && version != 0 && index_version_ == version) {
      return index_;
    }
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("fstat: ", strerror(errno)));
  }
  std::string head(
      std::min<size_t>(max_header_bytes, static_cast<size_t>(st.st_size)),
      '\0');
  size_t got = 0;
  while (got < head.size()) {
    const ssize_t n = ::pread(fd, head.data() + got, head.size() - got,
                              static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InternalError(absl::StrCat("read: ", strerror(errno)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  head.resize(got);
  auto index = std::make_shared<const ParsedHeader>(ParseHeader(head));
  absl::MutexLock lock(&mu_);
  if (version != 0 && version >= index_version_) {
    index_version_ = version;
    index_ = index;
  }
  ++index_builds_;
  return index;
}

}  // namespace sinkline::broker
