// sinkline-sink-dkim-sign: signs messages at EOD before COMMIT with the keys
// of their From: domain (RSA-SHA256, Ed25519-SHA256; relaxed/relaxed).
#include <spdlog/spdlog.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "sinks/dkim_sign/dkim_sign_sink.h"

ABSL_FLAG(std::string, keys, "",
          "YAML file: domains → selector, algorithm, PEM key path");
ABSL_FLAG(std::string, sign_headers, "",
          "comma-separated header fields to sign (empty: the built-in list)");
ABSL_FLAG(std::string, oversign_headers, "from",
          "comma-separated fields signed once more than they occur");
ABSL_FLAG(bool, tempfail_on_error, false,
          "answer 451 4.3.0 when a message cannot be signed, instead of "
          "passing it unsigned");
ABSL_FLAG(absl::Duration, check_interval, absl::Seconds(10),
          "how often at most to look whether the keys file or a key changed");

namespace {
std::vector<std::string> List(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    out.push_back(absl::AsciiStrToLower(absl::StripAsciiWhitespace(item)));
  }
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "dkim-sign");
  sinkline::sinks::DkimSignOptions options;
  options.keys_path = absl::GetFlag(FLAGS_keys);
  if (const auto h = absl::GetFlag(FLAGS_sign_headers); !h.empty()) {
    options.signer.sign_headers = List(h);
  }
  options.signer.oversign_headers = List(absl::GetFlag(FLAGS_oversign_headers));
  options.check_interval = absl::GetFlag(FLAGS_check_interval);
  options.tempfail_on_error = absl::GetFlag(FLAGS_tempfail_on_error);
  auto sink = sinkline::sinks::DkimSignSink::Create(std::move(options));
  if (!sink.ok()) {
    spdlog::critical("--keys: {}", sink.status().ToString());
    return 1;
  }
  return sinkline::sdk::Serve(**sink);
}
