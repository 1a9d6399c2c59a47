// The recipient-policy sink: at RCPT, accepts the recipients listed in a file
// and refuses every other with 550 5.1.1. The file holds one entry per line:
// an address ("bob@example.test") or a whole domain ("@example.test"); case
// does not matter; '#' starts a comment. The file is read again when it
// changes (checked at most every `check_interval`), so operators edit it (or
// swap it, as Kubernetes does with a ConfigMap) without a restart.
#pragma once

#include <sys/stat.h>

#include <mutex>
#include <string>
#include <unordered_set>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sinkline/sdk/sink.h"

namespace sinkline::sinks {

// The accepted recipients: exact addresses and whole domains.
class RecipientList {
 public:
  // Parses the file's text; an entry that is not "local@domain" or "@domain"
  // fails with its line number.
  static absl::StatusOr<RecipientList> Parse(absl::string_view text);

  // True for a listed address or an address in a listed domain.
  bool Accepts(absl::string_view address) const;

  size_t size() const { return addresses_.size() + domains_.size(); }

 private:
  std::unordered_set<std::string> addresses_;  // lower-cased
  std::unordered_set<std::string> domains_;    // lower-cased, without '@'
};

class RecipientPolicySink final : public sdk::Sink {
 public:
  // Reads `path` once; fails when it cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<RecipientPolicySink>> Create(
      std::string path, absl::Duration check_interval, std::string reject_text);

  void OnRcpt(sdk::EventContext& ctx) override;

  // True when `address` is accepted by the list as it stands now (reloading
  // the file first when it changed).
  bool Accepts(absl::string_view address);

 private:
  struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    struct timespec mtime = {0, 0};
    bool operator==(const FileId& o) const {
      return dev == o.dev && ino == o.ino && size == o.size &&
             mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec;
    }
  };
  RecipientPolicySink(std::string path, absl::Duration check_interval,
                      std::string reject_text)
      : path_(std::move(path)),
        check_interval_(check_interval),
        reject_text_(std::move(reject_text)) {}

  // Reads the file if it changed since the last load. Keeps the old list
  // when the new file cannot be read or parsed.
  absl::Status MaybeReload(bool force);

  const std::string path_;
  const absl::Duration check_interval_;
  const std::string reject_text_;

  std::mutex mu_;
  RecipientList list_;
  FileId loaded_;
  absl::Time last_check_ = absl::InfinitePast();
};

}  // namespace sinkline::sinks
