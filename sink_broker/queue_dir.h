// The spool queue directory backend: <dir>/tmp/<id> written and fsynced,
// then renamed to <dir>/new/<id>. The file's first line is the QueueEntry as
// JSON (proto field names), then the message bytes exactly.
#pragma once

#include <memory>
#include <string>

#include "sink_broker/queue_backend.h"

namespace sinkline::broker {

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
