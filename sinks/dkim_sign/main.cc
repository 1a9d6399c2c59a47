// sinkline-sink-dkim-sign: signs messages at EOD before COMMIT with the keys
// of their From: domain (RSA-SHA256, Ed25519-SHA256; relaxed/relaxed).
#include <spdlog/spdlog.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "dkim_sign_sink.h"

ABSL_FLAG(std::string, keys, "",
          "YAML file: domains → selector, algorithm, PEM key path");
ABSL_FLAG(std::string, sign_headers, "",
          "comma-separated header fields to sign (empty: the built-in list)");
ABSL_FLAG(std::string, oversign_headers, "from",
          "comma-separated fields signed once more than they occur");
ABSL_FLAG(bool, tempfail_on_error, false,
          "answer 451 4.3.0 when a message cannot be signed, instead of "
          "passing it unsigned");

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
  auto keys = sinkline::sinks::LoadDkimKeys(absl::GetFlag(FLAGS_keys));
  if (!keys.ok()) {
    spdlog::critical("--keys: {}", keys.status().ToString());
    return 1;
  }
  sinkline::sinks::DkimSignerOptions options;
  if (const auto h = absl::GetFlag(FLAGS_sign_headers); !h.empty()) {
    options.sign_headers = List(h);
  }
  options.oversign_headers = List(absl::GetFlag(FLAGS_oversign_headers));
  for (const auto& [domain, list] : *keys) {
    for (const auto& key : list) {
      spdlog::info("signing {} with selector {} ({})", domain, key.selector,
                   key.algorithm == sinkline::sinks::DkimAlgorithm::kRsaSha256
                       ? "rsa-sha256"
                       : "ed25519-sha256");
    }
  }
  auto signer = sinkline::sinks::DkimSigner::Create(*std::move(keys), options);
  if (!signer.ok()) {
    spdlog::critical("{}", signer.status().ToString());
    return 1;
  }
  sinkline::sinks::DkimSignSink sink(*std::move(signer),
                                     absl::GetFlag(FLAGS_tempfail_on_error));
  return sinkline::sdk::Serve(sink);
}
