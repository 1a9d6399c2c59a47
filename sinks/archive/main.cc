// sinkline-sink-archive: after COMMIT, holds the lease, copies every message
// and its envelope into an archive directory, then releases the lease.
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "sinks/archive/archive_sink.h"

ABSL_FLAG(std::string, archive_dir, "", "directory that receives the copies");
ABSL_FLAG(int, copy_threads, 4, "threads that copy messages");
ABSL_FLAG(int, attempts, 3, "attempts per message before giving up");
ABSL_FLAG(absl::Duration, renew, absl::Seconds(60),
          "renew the lease by this much before copying (0s: do not)");
ABSL_FLAG(bool, fsync, true, "flush every file and the directory to disk");

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "archive");
  sinkline::sinks::ArchiveOptions options;
  options.dir = absl::GetFlag(FLAGS_archive_dir);
  options.threads = absl::GetFlag(FLAGS_copy_threads);
  options.attempts = absl::GetFlag(FLAGS_attempts);
  options.renew = absl::GetFlag(FLAGS_renew);
  options.sync = absl::GetFlag(FLAGS_fsync);
  struct stat st;
  if (options.dir.empty() || ::stat(options.dir.c_str(), &st) != 0 ||
      !S_ISDIR(st.st_mode)) {
    spdlog::critical("--archive-dir must name an existing directory");
    return 1;
  }
  sinkline::sinks::ArchiveSink sink(options);
  return sinkline::sdk::Serve(sink);
}
