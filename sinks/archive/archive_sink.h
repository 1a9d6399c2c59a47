// The archive sink: bound to EOD after COMMIT with read access, it answers at
// once with hold_lease, then, on its own threads, copies the whole message
// through the broker's Content service into an archive directory and
// releases the lease. The message is submitted only after the release, so
// every queued message has its archived copy:
//
//   <dir>/<queue id>.eml   the message, byte for byte as the lease sees it
//   <dir>/<queue id>.json  the envelope, session and transaction (QueueEntry
//                          JSON, proto field names)
//
// Each file is written to a temporary name, flushed to disk, and renamed, so
// a reader never sees half a file. A copy that cannot be written is retried;
// when every attempt fails the lease is left to expire and the binding's
// expiry_policy decides (use `hold` so that nothing leaves unarchived).
#pragma once

#include <boost/asio/thread_pool.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sinkline/sdk/sink.h"

namespace sinkline::sinks {

struct ArchiveOptions {
  std::string dir;
  // Threads that copy messages.
  int threads = 4;
  // Attempts per message before the lease is left to expire.
  int attempts = 3;
  // Renew the lease by this much before copying (0: do not renew).
  absl::Duration renew = absl::Seconds(60);
  // fsync files and the directory.
  bool sync = true;
};

// Whether a queue id is safe as a file name (letters, digits, '.', '_', '-';
// not starting with '.').
bool SafeFileName(absl::string_view name);

class ArchiveSink final : public sdk::Sink {
 public:
  explicit ArchiveSink(ArchiveOptions options);
  ~ArchiveSink() override;

  void OnEod(sdk::EventContext& ctx) override;

  // Copies one message: reads it through the Content service, writes both
  // files. Does not release the lease.
  absl::Status Archive(const v1::SinkRequest& request);

 private:
  void Run(const v1::SinkRequest& request);

  const ArchiveOptions options_;
  boost::asio::thread_pool pool_;
};

}  // namespace sinkline::sinks
