// The PROXY protocol parser: table-driven, each header also fed one octet at
// a time (every proper prefix must ask for more, never fail or succeed).
#include "smtp_edge/proxy_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace sinkline::edge {
namespace {

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string V2(unsigned char ver_cmd, unsigned char fam,
               const std::string& payload) {
  std::string h = kSig;
  h += static_cast<char>(ver_cmd);
  h += static_cast<char>(fam);
  h += static_cast<char>(payload.size() >> 8);
  h += static_cast<char>(payload.size() & 0xff);
  return h + payload;
}

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s += static_cast<char>(c);
  return s;
}

const std::string kV4Block = Bytes(
    {192, 0, 2, 7, 198, 51, 100, 1, 0xc3, 0x50, 0x00, 0x19});  // 50000 -> 25
const std::string kV6Block = Bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
                                    0,    0,    0,    0,    0, 0, 0, 0x07,
                                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
                                    0,    0,    0,    0,    0, 0, 0, 0x01,
                                    0x04, 0x00, 0x00, 0x19});  // 1024 -> 25

struct Case {
  const char* name;
  std::string input;
  ProxyVersions versions;
  ProxyParse::State state;
  // kDone: the header's length and what it says.
  size_t consumed = 0;
  int version = 0;
  bool has_addresses = false;
  std::string source_ip = "";
  int source_port = 0;
  std::string dest_ip = "";
  int dest_port = 0;
};

using S = ProxyParse::State;
constexpr auto kAny = ProxyVersions::kAny;

std::vector<Case> Cases() {
  const std::string v1_tcp4 = "PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n";
  const std::string v1_tcp6 = "PROXY TCP6 2001:db8::7 2001:db8::1 1024 25\r\n";
  const std::string tlv = Bytes({0x04, 0x00, 0x02, 'h', 'i'});  // NOOP TLV
  return {
      {"v1 TCP4", v1_tcp4 + "EHLO x\r\n", kAny, S::kDone, v1_tcp4.size(), 1,
       true, "192.0.2.7", 50000, "198.51.100.1", 25},
      {"v1 TCP6", v1_tcp6, ProxyVersions::kV1, S::kDone, v1_tcp6.size(), 1,
       true, "2001:db8::7", 1024, "2001:db8::1", 25},
      {"v1 UNKNOWN", "PROXY UNKNOWN\r\n", kAny, S::kDone, 15, 1, false},
      {"v1 UNKNOWN with addresses", "PROXY UNKNOWN ff::1 ff::2 1 2\r\n", kAny,
       S::kDone, 31, 1, false},
      {"v1 incomplete", "PROXY TCP4 192.0.2.7 198.51", kAny, S::kNeedMore},
      {"v1 only a prefix", "PRO", kAny, S::kNeedMore},
      {"v1 family mismatch", "PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n", kAny,
       S::kError},
      {"v1 bad address", "PROXY TCP4 192.0.2.300 192.0.2.1 1 2\r\n", kAny,
       S::kError},
      {"v1 port too big", "PROXY TCP4 192.0.2.7 192.0.2.1 65536 25\r\n", kAny,
       S::kError},
      {"v1 port leading zero", "PROXY TCP4 192.0.2.7 192.0.2.1 025 25\r\n",
       kAny, S::kError},
      {"v1 double space", "PROXY TCP4  192.0.2.7 192.0.2.1 1 25\r\n", kAny,
       S::kError},
      {"v1 missing field", "PROXY TCP4 192.0.2.7 192.0.2.1 1\r\n", kAny,
       S::kError},
      {"v1 unknown protocol", "PROXY UDP4 192.0.2.7 192.0.2.1 1 2\r\n", kAny,
       S::kError},
      {"v1 bare LF", "PROXY TCP4 192.0.2.7 192.0.2.1 1 25\n", kAny, S::kError},
      {"v1 bare CR", "PROXY TCP4 192.0.2.7\r192.0.2.1 1 2\r\n", kAny,
       S::kError},
      {"v1 oversize", "PROXY UNKNOWN " + std::string(100, 'x') + "\r\n", kAny,
       S::kError},
      {"v1 oversize without end", "PROXY UNKNOWN " + std::string(100, 'x'),
       kAny, S::kError},
      {"v1 when only v2", v1_tcp4, ProxyVersions::kV2, S::kError},
      {"SMTP instead of a header", "EHLO client.example\r\n", kAny, S::kError},
      {"v2 PROXY IPv4", V2(0x21, 0x11, kV4Block) + "EHLO", kAny, S::kDone, 28,
       2, true, "192.0.2.7", 50000, "198.51.100.1", 25},
      {"v2 PROXY IPv4 with a TLV", V2(0x21, 0x11, kV4Block + tlv),
       ProxyVersions::kV2, S::kDone, 33, 2, true, "192.0.2.7", 50000,
       "198.51.100.1", 25},
      {"v2 PROXY IPv6", V2(0x21, 0x21, kV6Block), kAny, S::kDone, 52, 2, true,
       "2001:db8::7", 1024, "2001:db8::1", 25},
      {"v2 LOCAL", V2(0x20, 0x00, ""), kAny, S::kDone, 16, 2, false},
      {"v2 LOCAL with addresses", V2(0x20, 0x11, kV4Block), kAny, S::kDone, 28,
       2, false},
      {"v2 PROXY UNSPEC", V2(0x21, 0x00, ""), kAny, S::kDone, 16, 2, false},
      {"v2 truncated addresses", V2(0x21, 0x11, kV4Block).substr(0, 20), kAny,
       S::kNeedMore},
      {"v2 address block too short", V2(0x21, 0x11, kV4Block.substr(0, 8)),
       kAny, S::kError},
      {"v2 IPv6 block too short", V2(0x21, 0x21, kV4Block), kAny, S::kError},
      {"v2 version 1", V2(0x11, 0x11, kV4Block), kAny, S::kError},
      {"v2 unknown command", V2(0x22, 0x11, kV4Block), kAny, S::kError},
      {"v2 datagram", V2(0x21, 0x12, kV4Block), kAny, S::kError},
      {"v2 unknown family", V2(0x21, 0x41, kV4Block), kAny, S::kError},
      {"v2 oversize", V2(0x21, 0x11, kV4Block + std::string(2100, 'x')), kAny,
       S::kError},
      {"v2 bad signature",
       std::string("\r\n\r\n\0\r\nQUIX\n", 12) + Bytes({0x21, 0x11, 0, 12}) +
           kV4Block,
       kAny, S::kError},
      {"v2 when only v1", V2(0x21, 0x11, kV4Block), ProxyVersions::kV1,
       S::kError},
  };
}

class ProxyParser : public ::testing::TestWithParam<bool> {};

TEST_P(ProxyParser, Table) {
  const bool byte_at_a_time = GetParam();
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    ProxyParse p;
    if (byte_at_a_time) {
      // Every prefix asks for more until the header is whole or broken.
      for (size_t n = 0; n <= c.input.size(); ++n) {
        p = ParseProxyHeader(c.input.substr(0, n), c.versions);
        if (p.state != S::kNeedMore) break;
      }
      if (p.state == S::kDone) {
        EXPECT_EQ(
            ParseProxyHeader(c.input.substr(0, p.consumed - 1), c.versions)
                .state,
            S::kNeedMore);
      }
    } else {
      p = ParseProxyHeader(c.input, c.versions);
    }
    ASSERT_EQ(p.state, c.state) << p.error;
    if (c.state == S::kError) {
      EXPECT_FALSE(p.error.empty());
      continue;
    }
    if (c.state != S::kDone) continue;
    EXPECT_EQ(p.consumed, c.consumed);
    EXPECT_EQ(p.header.version, c.version);
    EXPECT_EQ(p.header.has_addresses, c.has_addresses);
    if (c.has_addresses) {
      EXPECT_EQ(p.header.source_ip, c.source_ip);
      EXPECT_EQ(p.header.source_port, c.source_port);
      EXPECT_EQ(p.header.dest_ip, c.dest_ip);
      EXPECT_EQ(p.header.dest_port, c.dest_port);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, ProxyParser, ::testing::Bool());

}  // namespace
}  // namespace sinkline::edge
