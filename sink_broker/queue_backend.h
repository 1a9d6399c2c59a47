// Where released messages go: the interface every queue backend implements
// (queue_dir.h: a spool queue directory; smtp_relay.h: a next-hop MTA).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// What a queue backend did with a message it was handed.
struct SubmitOutcome {
  // Recipients to try again later (the next hop answered 4xx for them);
  // empty when the backend is done with the message.
  std::vector<v1::Recipient> deferred;
  std::string deferred_reason;
  // The next hop's reply for each deferred recipient, in the same order
  // (empty when the backend does not say per recipient).
  std::vector<std::string> deferrals;
  // Recipients refused for good (5xx), each with the next hop's reply.
  std::vector<v1::Recipient> refused;
  std::vector<std::string> refusals;
};

// Where an asynchronous Submit reports, once.
using SubmitDone = std::function<void(absl::StatusOr<SubmitOutcome>)>;

class QueueBackend {
 public:
  virtual ~QueueBackend() = default;
  // Takes the message whose content is at `content_path`, for the
  // recipients in `entry`. OK: the backend took it for every recipient not
  // listed in the outcome. UNAVAILABLE: nothing was taken, try again later.
  // FAILED_PRECONDITION: refused for good, the message says why.
  virtual absl::StatusOr<SubmitOutcome> Submit(
      const v1::QueueEntry& entry, const std::string& content_path) = 0;
  // The same without waiting: `done` gets what Submit would return, on a
  // thread of the backend's (or on the caller's, before SubmitAsync
  // returns). The default runs Submit on the caller's thread; the relay
  // never blocks a thread on the network.
  virtual void SubmitAsync(const v1::QueueEntry& entry,
                           const std::string& content_path, SubmitDone done) {
    done(Submit(entry, content_path));
  }
  // e.g. "queue-dir /var/spool/sinkline/queue", "smtp-relay mx:25".
  virtual std::string Describe() const = 0;
};

}  // namespace sinkline::broker
