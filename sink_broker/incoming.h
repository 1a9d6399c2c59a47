// One transaction's content while it arrives: chunks appended to
// <spool>/incoming/<name>; COMMIT fsyncs it, moves it to
// <spool>/committed/<queue id>.msg and writes the envelope record (a binary
// sinkline.v1.QueueEntry) into the spool's store before the client hears
// 250.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sink_broker/spool.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

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
  // it to committed/, fsync committed/ (shared with concurrent COMMITs),
  // then the envelope record as one durable store write (its WAL fsync
  // shared the same way).
  absl::Status Commit(const Spool& spool, const v1::QueueEntry& entry);

 private:
  IncomingMessage(std::string spool_dir, std::string path, int fd);
  const std::string spool_dir_;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  bool committed_ = false;
};

}  // namespace sinkline::broker
