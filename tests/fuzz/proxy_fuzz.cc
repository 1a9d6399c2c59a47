// Fuzz target for the PROXY protocol parser (smtp_edge/proxy_protocol.h),
// the first bytes an edge behind a load balancer reads from the network.
//
// Input: one octet choosing the versions taken (0 v1, 1 v2, else any), then
// what the peer sends.
//
// Invariants checked (a violation aborts): a header that is done took at
// most the input, and no fewer than 16 octets for v2 or 8 for v1 ("PROXY "
// and its CRLF); every proper prefix of an accepted header needs more (the
// connection would have waited, not refused); what follows the header does
// not change it; bytes fed one at a time reach the same answer; v1 takes
// at most 107 octets and v2 at most 16 + 2048; version 1 headers come only
// where v1 is taken and version 2 only where v2 is; addresses, when
// present, are non-empty text that the parser would print back the same.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "smtp_edge/proxy_protocol.h"

namespace sinkline::edge {
namespace {

[[noreturn]] void Violation(const char* what) {
  std::fprintf(stderr, "proxy_fuzz: invariant violated: %s\n", what);
  std::abort();
}

bool Same(const ProxyParse& a, const ProxyParse& b) {
  return a.state == b.state && a.consumed == b.consumed &&
         a.header.version == b.header.version &&
         a.header.has_addresses == b.header.has_addresses &&
         a.header.source_ip == b.header.source_ip &&
         a.header.source_port == b.header.source_port &&
         a.header.dest_ip == b.header.dest_ip &&
         a.header.dest_port == b.header.dest_port;
}

void Run(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const ProxyVersions versions = data[0] == 0   ? ProxyVersions::kV1
                                 : data[0] == 1 ? ProxyVersions::kV2
                                                : ProxyVersions::kAny;
  const absl::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  const ProxyParse p = ParseProxyHeader(in, versions);
  switch (p.state) {
    case ProxyParse::State::kNeedMore:
      if (!p.error.empty()) Violation("an error while needing more");
      return;
    case ProxyParse::State::kError:
      if (p.error.empty()) Violation("an error without a reason");
      return;
    case ProxyParse::State::kDone:
      break;
  }
  const ProxyHeader& h = p.header;
  if (p.consumed > in.size()) Violation("took more than the input");
  if (h.version == 1) {
    if (versions == ProxyVersions::kV2) Violation("v1 where only v2 is taken");
    if (p.consumed < 8 || p.consumed > kProxyV1MaxLine) {
      Violation("v1 header length");
    }
    if (in.substr(0, 6) != "PROXY " || in.substr(p.consumed - 2, 2) != "\r\n") {
      Violation("v1 header not PROXY ... CRLF");
    }
  } else if (h.version == 2) {
    if (versions == ProxyVersions::kV1) Violation("v2 where only v1 is taken");
    if (p.consumed < 16 || p.consumed > 16 + kProxyV2MaxPayload) {
      Violation("v2 header length");
    }
  } else {
    Violation("version neither 1 nor 2");
  }
  if (h.has_addresses) {
    if (h.source_ip.empty() || h.dest_ip.empty()) Violation("empty address");
    for (const std::string* ip : {&h.source_ip, &h.dest_ip}) {
      for (char c : *ip) {
        if (!(c == '.' || c == ':' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'f'))) {
          Violation("address not inet_ntop text");
        }
      }
    }
  } else if (!h.source_ip.empty() || !h.dest_ip.empty()) {
    Violation("addresses without has_addresses");
  }
  // What follows the header is the client's: it changes nothing.
  const std::string header(in.substr(0, p.consumed));
  if (!Same(ParseProxyHeader(header, versions), p)) {
    Violation("the header alone parses otherwise");
  }
  if (!Same(ParseProxyHeader(header + "EHLO x\r\n", versions), p)) {
    Violation("bytes after the header change it");
  }
  // Every proper prefix waits for more, as the edge reads it in pieces.
  for (size_t n = 0; n < header.size(); ++n) {
    const ProxyParse q =
        ParseProxyHeader(absl::string_view(header).substr(0, n), versions);
    if (q.state != ProxyParse::State::kNeedMore) {
      Violation("a prefix of an accepted header was not kNeedMore");
    }
  }
}

}  // namespace
}  // namespace sinkline::edge

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sinkline::edge::Run(data, size);
  return 0;
}
