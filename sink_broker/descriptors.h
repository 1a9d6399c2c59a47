// Descriptors the broker holds for messages (issue 13), bounded so that the
// process never runs out of them: a transaction's arriving file and each
// lease's snapshot count. At the limit a new transaction's content is not
// stored and its EOD is answered 451 4.3.2; what is already taken in goes
// on (leases of committed messages are granted past the limit: the reserve
// between the limit and RLIMIT_NOFILE is for them, for sockets and for the
// short-lived files of COMMIT, edits and submission).
//
// Metrics: sinkline_broker_message_descriptors (now), _peak, _limit and
// sinkline_broker_descriptor_refusals_total.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/synchronization/mutex.h"

namespace sinkline::broker {

class MessageDescriptors {
 public:
  // The process's table (a descriptor is a process-wide resource).
  static MessageDescriptors& Default();

  // 0: no limit (still counted).
  void set_limit(int64_t limit);
  int64_t limit() const;
  // The limit main.cc uses unless told one: the soft RLIMIT_NOFILE less a
  // reserve (a quarter, at least 64), never under 8.
  static int64_t DefaultLimit();

  // One descriptor held until the last copy goes.
  using Hold = std::shared_ptr<void>;
  // For a new transaction: null at the limit (counted as a refusal).
  Hold TryAcquire();
  // For what is already taken in: always counted, never refused.
  void Add();
  void Remove();

  int64_t in_use() const;
  int64_t peak() const;

 private:
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  mutable absl::Mutex mu_;
  int64_t limit_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sinkline::broker
