// One transaction's content while it arrives: chunks appended to
// <spool>/incoming/<name>; COMMIT fsyncs it, writes the envelope record (a
// binary sinkline.v1.QueueEntry) beside it and moves both under
// <spool>/committed/<queue id>.{msg,env} before the client hears 250.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
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

}  // namespace sinkline::broker
