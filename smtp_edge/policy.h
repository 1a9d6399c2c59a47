// Who may do what on the edge, with no I/O at check time: the credentials
// file for AUTH (crypt(3) hashes) and the accepted domains for relay
// control. Trusted networks are sinkline::Cidr blocks (common/cidr.h).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sinkline/common/cidr.h"

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

// The domain of a mailbox, lower-cased ("" when it has no '@').
std::string MailboxDomain(absl::string_view address);

}  // namespace sinkline::edge
