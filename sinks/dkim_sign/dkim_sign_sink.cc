#include "sinks/dkim_sign/dkim_sign_sink.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "sinkline/common/file_stamp.h"
#include "sinkline/common/metrics.h"
#include "sinkline/sdk/content.h"

namespace sinkline::sinks {

namespace {

void Count(const char* result) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_dkim_messages_total",
                  "Messages the dkim-sign sink saw, by result.",
                  {{"result", result}})
      .Inc();
}

void AppendFileId(std::string* out, const std::string& path) {
  const std::string stamp = FileStamp(path);
  absl::StrAppend(out, path, ":", stamp.empty() ? "missing" : stamp, ";");
}

const char* AlgorithmName(DkimAlgorithm algorithm) {
  return algorithm == DkimAlgorithm::kRsaSha256 ? "rsa-sha256"
                                                : "ed25519-sha256";
}

}  // namespace

absl::StatusOr<std::unique_ptr<DkimSignSink>> DkimSignSink::Create(
    DkimSignOptions options) {
  std::unique_ptr<DkimSignSink> sink(new DkimSignSink(std::move(options)));
  if (absl::Status st = sink->Load(); !st.ok()) return st;
  return sink;
}

std::string DkimSignSink::Fingerprint(const DkimKeys* keys) const {
  std::string out;
  AppendFileId(&out, options_.keys_path);
  if (keys != nullptr) {
    for (const auto& [domain, list] : *keys) {
      for (const auto& key : list) AppendFileId(&out, key.key_path);
    }
  } else {
    for (const auto& path : key_paths_) AppendFileId(&out, path);
  }
  return out;
}

absl::Status DkimSignSink::Load() {
  // Called with mu_ held, or before the sink serves.
  auto keys = LoadDkimKeys(options_.keys_path);
  if (!keys.ok()) return keys.status();
  const std::string fingerprint = Fingerprint(&*keys);
  std::vector<std::string> paths;
  for (const auto& [domain, list] : *keys) {
    for (const auto& key : list) {
      paths.push_back(key.key_path);
      spdlog::info("signing {} with selector {} ({})", domain, key.selector,
                   AlgorithmName(key.algorithm));
    }
  }
  auto signer = DkimSigner::Create(*std::move(keys), options_.signer);
  if (!signer.ok()) return signer.status();
  signer_ = std::shared_ptr<const DkimSigner>(std::move(*signer));
  key_paths_ = std::move(paths);
  fingerprint_ = fingerprint;
  return absl::OkStatus();
}

std::shared_ptr<const DkimSigner> DkimSignSink::Signer() {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = absl::Now();
  if (now - last_check_ >= options_.check_interval) {
    last_check_ = now;
    if (Fingerprint(nullptr) != fingerprint_) {
      if (absl::Status st = Load(); !st.ok()) {
        spdlog::error("dkim-sign: keeping the previous keys: {}",
                      st.ToString());
        // Do not try again before the files change once more.
        fingerprint_ = Fingerprint(nullptr);
      }
    }
  }
  return signer_;
}

void DkimSignSink::OnEod(sdk::EventContext& ctx) {
  const std::string& id = ctx.event().transaction_id();
  if (!ctx.can_write()) {
    spdlog::error("dkim-sign: binding {} is not read-write; not signing",
                  ctx.binding());
    Count("error");
    return;
  }
  auto fail = [&](const absl::Status& st) {
    spdlog::error("dkim-sign {}: {}", id, st.ToString());
    Count("error");
    if (options_.tempfail_on_error) {
      ctx.Reject(451, "4.3.0", "Message could not be signed, try again later");
    }
  };
  const std::shared_ptr<const DkimSigner> signer = Signer();
  auto message = sdk::ReadMessage(ctx);
  if (!message.ok()) return fail(message.status());
  auto signatures = signer->Sign(*message, id);
  if (!signatures.ok()) return fail(signatures.status());
  if (signatures->empty()) {
    spdlog::debug("dkim-sign {}: no key for this From: domain", id);
    Count("unsigned");
    return;
  }
  for (const std::string& value : *signatures) {
    ctx.AddHeader("DKIM-Signature", value);
  }
  Count("signed");
}

}  // namespace sinkline::sinks
