// IP blocks for every rule that names client networks: the edge's trusted
// networks and proxies, and the broker's `client=` binding condition.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkline {

// One CIDR block, IPv4 or IPv6 ("10.0.0.0/8", "2001:db8::/32"); a bare
// address is a single host. An IPv4-mapped IPv6 address ("::ffff:192.0.2.1",
// as a dual-stack socket names an IPv4 peer) is the IPv4 address, in a block
// and in a lookup; an IPv6 block never holds an IPv4 address. A zone
// ("fe80::1%eth0") is ignored.
class Cidr {
 public:
  // Parses `text`, which has no surrounding blanks. Errors say what is
  // wrong without repeating `text`; `error_at`, when given, is set to the
  // offset in `text` of the part at fault: 0 for the address, the octet
  // after the '/' for the prefix length.
  static absl::StatusOr<Cidr> Parse(absl::string_view text,
                                    size_t* error_at = nullptr);

  // `ip` in text form; false when it is not an address.
  bool Contains(absl::string_view ip) const;

  bool v4() const { return v4_; }
  int prefix() const { return prefix_; }

 private:
  std::array<unsigned char, 16> bytes_{};  // IPv4: the first 4
  bool v4_ = false;
  int prefix_ = 0;
};

// Blocks as operators list them (a flag, a config list): blanks around each
// are dropped and empty entries skipped. An error names the block.
absl::StatusOr<std::vector<Cidr>> ParseNetworks(
    const std::vector<std::string>& blocks);
// True when some block holds `ip`.
bool InNetworks(const std::vector<Cidr>& networks, absl::string_view ip);

}  // namespace sinkline
