// The dkim-sign sink: bound to EOD before COMMIT with read-write access, it
// reads the whole message (inline or through the Content service), signs it
// with every key of the From: domain (see dkim_signer.h) and adds one
// DKIM-Signature header per key at the top. A message with no configured
// domain passes unsigned; a signing error continues unsigned and is logged
// and counted, or refuses the message with 451 4.3.0 under --tempfail-on-error.
//
// The keys file and the key files are watched: when one of them changes
// (checked at most every `check_interval`, as a Kubernetes secret update
// swaps them), they are loaded again; a set that does not load is logged and
// the previous keys stay.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sinkline/sdk/sink.h"
#include "sinks/dkim_sign/dkim_signer.h"

namespace sinkline::sinks {

struct DkimSignOptions {
  std::string keys_path;
  DkimSignerOptions signer;
  absl::Duration check_interval = absl::Seconds(10);
  bool tempfail_on_error = false;
};

class DkimSignSink final : public sdk::Sink {
 public:
  // Loads the keys; fails when they do not load.
  static absl::StatusOr<std::unique_ptr<DkimSignSink>> Create(
      DkimSignOptions options);

  void OnEod(sdk::EventContext& ctx) override;

  // The signer in use, after loading the keys again if they changed.
  std::shared_ptr<const DkimSigner> Signer();

 private:
  explicit DkimSignSink(DkimSignOptions options)
      : options_(std::move(options)) {}
  // What the files look like now: path, device, inode, size, mtime of the
  // keys file and of every key file it names.
  std::string Fingerprint(const DkimKeys* keys) const;
  absl::Status Load();

  const DkimSignOptions options_;
  std::mutex mu_;
  std::shared_ptr<const DkimSigner> signer_;
  std::vector<std::string> key_paths_;
  std::string fingerprint_;
  absl::Time last_check_ = absl::InfinitePast();
};

}  // namespace sinkline::sinks
