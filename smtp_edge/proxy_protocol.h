// The PROXY protocol header a load balancer puts in front of a proxied
// connection: version 1 (one text line) and version 2 (binary). A pure
// parser: bytes in, the header or an error out; no sockets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace sinkline::edge {

// Which versions a listener takes.
enum class ProxyVersions { kV1, kV2, kAny };

struct ProxyHeader {
  int version = 0;  // 1 or 2
  // False for v1 UNKNOWN, v2 LOCAL, and v2 PROXY with an unspecified or
  // non-IP family: the connection's own addresses stand.
  bool has_addresses = false;
  std::string source_ip;  // textual, as inet_ntop writes it
  uint16_t source_port = 0;
  std::string dest_ip;
  uint16_t dest_port = 0;
};

struct ProxyParse {
  enum class State { kNeedMore, kDone, kError };
  State state = State::kNeedMore;
  // kDone: octets the header took; what follows is SMTP.
  size_t consumed = 0;
  ProxyHeader header;
  std::string error;  // kError: why
};

// The v1 line is at most 107 octets with its CRLF.
inline constexpr size_t kProxyV1MaxLine = 107;
// v2: the most octets of addresses and TLVs taken after the 16-octet fixed
// part; a longer header is refused.
inline constexpr size_t kProxyV2MaxPayload = 2048;

// Parses the start of a connection's input. kNeedMore while `in` is a
// proper prefix of an acceptable header.
ProxyParse ParseProxyHeader(absl::string_view in, ProxyVersions versions);

}  // namespace sinkline::edge
