// Durable writes: the one way Sinkline processes put bytes on disk so that
// they survive a crash.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sinkline {

// The status of a failed system call on the store path: RESOURCE_EXHAUSTED
// when the disk is full (ENOSPC, EDQUOT: the edge answers 452 4.3.1),
// UNAVAILABLE for any other errno.
absl::Status ErrnoStatus(absl::string_view what, int err);

// Writes all of `data` to `fd`, retrying short writes and EINTR.
absl::Status WriteAll(int fd, absl::string_view data);

// fsync of a file or directory by path.
absl::Status FsyncPath(const std::string& path);

// Makes the entries of directory `dir` durable (renames and unlinks done
// before the call), sharing fsyncs between concurrent callers: group
// commit. A caller needs an fsync that starts after its call; while one
// runs, later callers wait for it to end and then one of them runs the
// next fsync for all who arrived meanwhile (metric
// sinkline_dir_syncs_total{what="requested"|"run"}).
absl::Status SyncDirectory(const std::string& dir);
struct DirectorySyncStats {
  uint64_t requested = 0;
  uint64_t run = 0;
};
DirectorySyncStats DirectorySyncCounts();
// For tests: runs before each directory fsync, outside the lock.
void SetDirectorySyncHookForTesting(std::function<void()> hook);

// Writes a file atomically: a temporary file beside it (hidden, unique,
// ".<name>.<pid>-<n>.tmp"), fsync when `sync`, rename over `path`, then the
// directory synced (shared with concurrent callers) when `sync`. Readers see
// the old file or the new one, never a part; after a crash at most a temporary
// file is left.
absl::Status WriteFileDurably(const std::string& path, absl::string_view data,
                              bool sync = true);

// The whole content of a file ("" when it cannot be read).
std::string ReadWholeFile(const std::string& path);

}  // namespace sinkline
