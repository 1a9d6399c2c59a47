// Who may do what on the edge, with no I/O at check time: the credentials
// file for AUTH (crypt(3) hashes), trusted networks (CIDR blocks) and the
// accepted domains for relay control.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkline::edge {

// Users and their crypt(3) hashes ("$y$..." yescrypt, "$6$..." SHA-512,
// ...), one `user:hash` per line; blank lines and lines starting with '#'
// are skipped. Plain or legacy DES "hashes" are refused when loading.
class Credentials {
 public:
  static absl::StatusOr<Credentials> Load(const std::string& path);
  static absl::StatusOr<Credentials> Parse(absl::string_view text);

  // True when `user` exists and `password` matches its hash. Costs one hash
  // computation whether or not the user exists.
  bool Check(absl::string_view user, absl::string_view password) const;
  size_t size() const { return users_.size(); }

 private:
  std::map<std::string, std::string> users_;
};

// One CIDR block, IPv4 or IPv6 ("10.0.0.0/8", "::1/128"; a bare address is
// a single host).
struct Cidr {
  std::vector<unsigned char> bytes;  // 4 or 16
  int prefix = 0;

  static absl::StatusOr<Cidr> Parse(absl::string_view text);
  // `ip` in text form; an IPv4-mapped IPv6 address matches IPv4 blocks.
  bool Contains(absl::string_view ip) const;
};

absl::StatusOr<std::vector<Cidr>> ParseNetworks(
    const std::vector<std::string>& blocks);
bool InNetworks(const std::vector<Cidr>& networks, absl::string_view ip);

// The domain of a mailbox, lower-cased ("" when it has no '@').
std::string MailboxDomain(absl::string_view address);

}  // namespace sinkline::edge
