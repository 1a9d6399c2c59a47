#include "smtp_edge/proxy_protocol.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace sinkline::edge {

namespace {

constexpr char kV2Signature[] = "\r\n\r\n\0\r\nQUIT\n";
constexpr size_t kV2SignatureLen = 12;
constexpr absl::string_view kV1Prefix = "PROXY ";

ProxyParse Error(std::string why) {
  ProxyParse p;
  p.state = ProxyParse::State::kError;
  p.error = std::move(why);
  return p;
}

// `in` and `sig` agree on their common length.
bool AgreesWith(absl::string_view in, absl::string_view sig) {
  const size_t n = std::min(in.size(), sig.size());
  return in.substr(0, n) == sig.substr(0, n);
}

bool TextAddress(int family, const std::string& text, std::string* out) {
  unsigned char buf[16];
  if (inet_pton(family, text.c_str(), buf) != 1) return false;
  char str[INET6_ADDRSTRLEN];
  if (inet_ntop(family, buf, str, sizeof str) == nullptr) return false;
  *out = str;
  return true;
}

bool TextPort(absl::string_view text, uint16_t* port) {
  // Decimal, no sign, no leading zero.
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  uint32_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || v > 65535) return false;
  *port = static_cast<uint16_t>(v);
  return true;
}

ProxyParse ParseV1(absl::string_view in) {
  const size_t lf = in.find('\n');
  if (lf == absl::string_view::npos) {
    if (in.size() >= kProxyV1MaxLine) return Error("v1 line too long");
    // A CR must be the line's last octet but one.
    const size_t cr = in.find('\r');
    if (cr != absl::string_view::npos && cr + 1 != in.size()) {
      return Error("v1 line with a bare CR");
    }
    return {};
  }
  if (lf + 1 > kProxyV1MaxLine) return Error("v1 line too long");
  if (lf == 0 || in[lf - 1] != '\r') return Error("v1 line without CRLF");
  const absl::string_view line = in.substr(0, lf - 1);
  if (line.find('\r') != absl::string_view::npos) {
    return Error("v1 line with a bare CR");
  }
  std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
  ProxyParse p;
  p.state = ProxyParse::State::kDone;
  p.consumed = lf + 1;
  p.header.version = 1;
  if (f.size() >= 2 && f[1] == "UNKNOWN") {
    // Whatever follows UNKNOWN is ignored.
    return p;
  }
  if (f.size() != 6) return Error("v1 line needs 6 fields");
  int family = 0;
  if (f[1] == "TCP4") {
    family = AF_INET;
  } else if (f[1] == "TCP6") {
    family = AF_INET6;
  } else {
    return Error("v1 protocol must be TCP4, TCP6 or UNKNOWN");
  }
  if (!TextAddress(family, std::string(f[2]), &p.header.source_ip) ||
      !TextAddress(family, std::string(f[3]), &p.header.dest_ip)) {
    return Error("v1 address does not match its protocol");
  }
  if (!TextPort(f[4], &p.header.source_port) ||
      !TextPort(f[5], &p.header.dest_port)) {
    return Error("v1 bad port");
  }
  p.header.has_addresses = true;
  return p;
}

std::string BinaryAddress(int family, const unsigned char* bytes) {
  char str[INET6_ADDRSTRLEN];
  if (inet_ntop(family, bytes, str, sizeof str) == nullptr) return "";
  return str;
}

uint16_t Be16(const unsigned char* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

ProxyParse ParseV2(absl::string_view in) {
  if (in.size() < 16) return {};
  const auto* b = reinterpret_cast<const unsigned char*>(in.data());
  const int version = b[12] >> 4;
  const int command = b[12] & 0x0f;
  const int family = b[13] >> 4;
  const int transport = b[13] & 0x0f;
  const size_t len = Be16(b + 14);
  if (version != 2) return Error("v2 header with a version other than 2");
  if (command > 1) return Error("v2 command must be LOCAL or PROXY");
  if (len > kProxyV2MaxPayload) return Error("v2 header too long");
  if (in.size() < 16 + len) return {};
  ProxyParse p;
  p.state = ProxyParse::State::kDone;
  p.consumed = 16 + len;
  p.header.version = 2;
  if (command == 0) return p;  // LOCAL: the proxy's own connection
  if (family > 3) return Error("v2 unknown address family");
  if (transport > 2) return Error("v2 unknown transport");
  if (transport == 2) return Error("v2 datagram transport on a stream");
  const unsigned char* a = b + 16;
  if (family == 1 || family == 2) {  // AF_INET, AF_INET6
    const int af = family == 1 ? AF_INET : AF_INET6;
    const size_t n = family == 1 ? 4 : 16;  // octets per address
    if (len < 2 * n + 4) {
      return Error(family == 1 ? "v2 IPv4 address block too short"
                               : "v2 IPv6 address block too short");
    }
    p.header.source_ip = BinaryAddress(af, a);
    p.header.dest_ip = BinaryAddress(af, a + n);
    p.header.source_port = Be16(a + 2 * n);
    p.header.dest_port = Be16(a + 2 * n + 2);
    p.header.has_addresses = true;
  } else if (family == 3 && len < 216) {
    return Error("v2 UNIX address block too short");
  }
  // UNSPEC and UNIX: no IP address to take. TLVs after the addresses are
  // skipped.
  return p;
}

}  // namespace

ProxyParse ParseProxyHeader(absl::string_view in, ProxyVersions versions) {
  const absl::string_view sig(kV2Signature, kV2SignatureLen);
  const bool v1 = versions != ProxyVersions::kV2 && AgreesWith(in, kV1Prefix);
  const bool v2 = versions != ProxyVersions::kV1 && AgreesWith(in, sig);
  if (!v1 && !v2) {
    switch (versions) {
      case ProxyVersions::kV1:
        return Error("no PROXY v1 header");
      case ProxyVersions::kV2:
        return Error("no PROXY v2 signature");
      case ProxyVersions::kAny:
        break;
    }
    return Error("no PROXY header");
  }
  if (v1 && in.size() >= kV1Prefix.size()) return ParseV1(in);
  if (v2 && in.size() >= kV2SignatureLen) return ParseV2(in);
  return {};  // a prefix of a signature
}

}  // namespace sinkline::edge
