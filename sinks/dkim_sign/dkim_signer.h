// DKIM signing with libopendkim: RSA-SHA256 and Ed25519-SHA256 (RFC 8463),
// relaxed/relaxed, one or more keys per domain. The keys file (YAML) maps
// each signing domain to its selectors and PEM private keys:
//
//   domains:
//     example.test:
//       - selector: rsa2026
//         algorithm: rsa-sha256          # or ed25519-sha256
//         key: /etc/sinkline/dkim/example.test/rsa2026.pem
//       - selector: ed2026
//         algorithm: ed25519-sha256
//         key: /etc/sinkline/dkim/example.test/ed2026.pem
//
// A message is signed for the domain of its From: header, or the closest
// parent domain that has keys (mail.example.test signs as example.test).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct dkim_lib;

namespace sinkline::sinks {

enum class DkimAlgorithm { kRsaSha256, kEd25519Sha256 };

struct DkimKey {
  std::string selector;
  DkimAlgorithm algorithm = DkimAlgorithm::kRsaSha256;
  std::string key_path;
  std::string pem;  // the private key as read from key_path
};

// Domain (lower-cased) → its keys, in file order.
using DkimKeys = std::map<std::string, std::vector<DkimKey>>;

// Parses the keys file's YAML text; `base_dir` resolves relative key paths.
// Each key file is read and checked: a PEM private key of the algorithm's
// type (RSA of at least 1024 bits, or Ed25519).
absl::StatusOr<DkimKeys> ParseDkimKeys(absl::string_view yaml,
                                       const std::string& base_dir);
absl::StatusOr<DkimKeys> LoadDkimKeys(const std::string& path);

// The domain part of the first address in a From: header value ("Alice
// <alice@Example.TEST>" → "example.test"); empty when there is none.
std::string FromDomain(absl::string_view from_value);

struct DkimSignerOptions {
  // Header fields to sign (lower case); the default leaves out trace fields
  // (Received, Return-Path), which later hops add.
  std::vector<std::string> sign_headers = {"from",
                                           "sender",
                                           "reply-to",
                                           "subject",
                                           "date",
                                           "message-id",
                                           "to",
                                           "cc",
                                           "mime-version",
                                           "content-type",
                                           "content-transfer-encoding",
                                           "content-id",
                                           "content-description",
                                           "in-reply-to",
                                           "references",
                                           "list-id",
                                           "list-help",
                                           "list-unsubscribe",
                                           "list-unsubscribe-post",
                                           "list-subscribe",
                                           "list-post",
                                           "list-owner",
                                           "list-archive"};
  // Fields signed once more than they occur, so that none can be added.
  std::vector<std::string> oversign_headers = {"from"};
};

class DkimSigner {
 public:
  static absl::StatusOr<std::unique_ptr<DkimSigner>> Create(
      DkimKeys keys, DkimSignerOptions options = {});
  ~DkimSigner();

  // The domain whose keys sign this message (From: domain or a parent);
  // empty when no configured domain applies.
  std::string SigningDomain(absl::string_view message) const;

  // The DKIM-Signature values (without the field name, folded with CRLF +
  // TAB) for `message` (CRLF lines, header block, empty line, body), one per
  // key of the signing domain; empty when no configured domain applies.
  absl::StatusOr<std::vector<std::string>> Sign(absl::string_view message,
                                                absl::string_view id) const;

 private:
  DkimSigner(DkimKeys keys, dkim_lib* lib)
      : keys_(std::move(keys)), lib_(lib) {}
  absl::StatusOr<std::string> SignOne(absl::string_view message,
                                      absl::string_view id,
                                      const std::string& domain,
                                      const DkimKey& key) const;

  const DkimKeys keys_;
  dkim_lib* const lib_;
  // NULL-terminated arrays for dkim_options (storage kept alive).
  std::vector<std::string> sign_storage_, oversign_storage_;
  std::vector<const char*> sign_, oversign_;
};

}  // namespace sinkline::sinks
