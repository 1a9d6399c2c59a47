// sinkline-sink-greylist: triplet greylisting at RCPT (451 4.7.1 on first
// sight), with its state in a file that survives a restart.
#include <spdlog/spdlog.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "sinks/greylist/greylist.h"

ABSL_FLAG(absl::Duration, delay, absl::Seconds(300),
          "how long a new triplet is refused (e.g. 300s, 5m)");
ABSL_FLAG(absl::Duration, retry_window, absl::Hours(24),
          "a triplet not retried within this time of its first sight is "
          "forgotten");
ABSL_FLAG(absl::Duration, expire, absl::Hours(36 * 24),
          "a passed triplet not seen for this long is forgotten");
ABSL_FLAG(std::string, state_file, "",
          "file that keeps the state across restarts (empty: memory only)");
ABSL_FLAG(absl::Duration, flush_interval, absl::Seconds(1),
          "write the state file at most this often after changes");
ABSL_FLAG(std::string, reply_text, "Greylisted, please try again later",
          "text of the 451 4.7.1 reply");

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "greylist");
  sinkline::sinks::GreylistOptions options;
  options.delay = absl::GetFlag(FLAGS_delay);
  options.retry_window = absl::GetFlag(FLAGS_retry_window);
  options.expire = absl::GetFlag(FLAGS_expire);
  options.state_file = absl::GetFlag(FLAGS_state_file);
  options.flush_interval = absl::GetFlag(FLAGS_flush_interval);
  options.reply_text = absl::GetFlag(FLAGS_reply_text);
  sinkline::sinks::Greylist greylist(options);
  if (absl::Status st = greylist.Load(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  greylist.StartFlusher();
  sinkline::sinks::GreylistSink sink(greylist, options.reply_text);
  const int rc = sinkline::sdk::Serve(sink);
  // ~Greylist writes the state one last time.
  return rc;
}
