#include "sinkline/common/cidr.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sinkline {
namespace {

// The first 12 octets of an IPv4-mapped IPv6 address (::ffff:0:0/96).
constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0,    0,
                                       0, 0, 0, 0, 0xff, 0xff};

// An address in text form: 4 octets for IPv4 (also when IPv4-mapped), 16
// for IPv6.
struct IpBytes {
  std::array<unsigned char, 16> bytes{};
  bool v4 = false;
};

bool ParseIp(absl::string_view text, IpBytes& out) {
  // The zone of a link-local address names an interface, not a network.
  std::string s(text.substr(0, text.find('%')));
  in_addr a4;
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) {
    std::memcpy(out.bytes.data(), &a4, 4);
    out.v4 = true;
    return true;
  }
  in6_addr a6;
  if (inet_pton(AF_INET6, s.c_str(), &a6) != 1) return false;
  if (std::memcmp(&a6, kMapped, sizeof kMapped) == 0) {
    std::memcpy(out.bytes.data(), reinterpret_cast<unsigned char*>(&a6) + 12,
                4);
    out.v4 = true;
    return true;
  }
  std::memcpy(out.bytes.data(), &a6, 16);
  out.v4 = false;
  return true;
}

}  // namespace

absl::StatusOr<Cidr> Cidr::Parse(absl::string_view text, size_t* error_at) {
  const size_t slash = text.find('/');
  const absl::string_view ip = text.substr(0, slash);
  IpBytes addr;
  if (!ParseIp(ip, addr)) {
    if (error_at != nullptr) *error_at = 0;
    return absl::InvalidArgumentError(
        absl::StrCat("'", ip, "' is not an IP address"));
  }
  // An IPv4-mapped block written in IPv6 form counts its prefix over the
  // whole IPv6 address.
  const bool mapped = addr.v4 && ip.find(':') != absl::string_view::npos;
  const int max_prefix = addr.v4 && !mapped ? 32 : 128;
  int prefix = max_prefix;
  if (slash != absl::string_view::npos &&
      (!absl::SimpleAtoi(text.substr(slash + 1), &prefix) || prefix < 0 ||
       prefix > max_prefix)) {
    if (error_at != nullptr) *error_at = slash + 1;
    return absl::InvalidArgumentError(
        absl::StrCat("prefix length must be 0..", max_prefix));
  }
  Cidr c;
  if (mapped && prefix < 96) {
    // Wider than the IPv4-mapped range: an IPv6 block.
    std::memcpy(c.bytes_.data(), kMapped, sizeof kMapped);
    std::memcpy(c.bytes_.data() + 12, addr.bytes.data(), 4);
    c.v4_ = false;
    c.prefix_ = prefix;
    return c;
  }
  c.bytes_ = addr.bytes;
  c.v4_ = addr.v4;
  c.prefix_ = mapped ? prefix - 96 : prefix;
  return c;
}

bool Cidr::Contains(absl::string_view ip) const {
  IpBytes addr;
  if (!ParseIp(ip, addr) || addr.v4 != v4_) return false;
  int bits = prefix_;
  for (size_t i = 0; i < bytes_.size() && bits > 0; ++i, bits -= 8) {
    const unsigned mask = bits >= 8 ? 0xffu : (0xffu << (8 - bits)) & 0xffu;
    if ((addr.bytes[i] & mask) != (bytes_[i] & mask)) return false;
  }
  return true;
}

absl::StatusOr<std::vector<Cidr>> ParseNetworks(
    const std::vector<std::string>& blocks) {
  std::vector<Cidr> out;
  for (const auto& b : blocks) {
    const absl::string_view text = absl::StripAsciiWhitespace(b);
    if (text.empty()) continue;
    auto c = Cidr::Parse(text);
    if (!c.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad network ", text, ": ", c.status().message()));
    }
    out.push_back(*c);
  }
  return out;
}

bool InNetworks(const std::vector<Cidr>& networks, absl::string_view ip) {
  for (const auto& n : networks) {
    if (n.Contains(ip)) return true;
  }
  return false;
}

}  // namespace sinkline
