// sinkline-sink-recipient-policy: refuses RCPT for recipients not listed in a
// file (550 5.1.1); the file is read again when it changes.
#include <spdlog/spdlog.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "sinks/recipient_policy/recipient_policy.h"

ABSL_FLAG(std::string, recipients, "",
          "file of accepted recipients: one address or @domain per line");
ABSL_FLAG(absl::Duration, check_interval, absl::Seconds(1),
          "how often at most to look whether the file changed (e.g. 1s, 0s)");
ABSL_FLAG(std::string, reject_text, "Recipient address rejected: user unknown",
          "text of the 550 5.1.1 reply");

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "recipient-policy");
  auto sink = sinkline::sinks::RecipientPolicySink::Create(
      absl::GetFlag(FLAGS_recipients), absl::GetFlag(FLAGS_check_interval),
      absl::GetFlag(FLAGS_reject_text));
  if (!sink.ok()) {
    spdlog::critical("{}", sink.status().ToString());
    return 1;
  }
  return sinkline::sdk::Serve(**sink);
}
