#include "sink_broker/relay_dns.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

TEST(ParseNextHop, RelayhostForms) {
  struct Case {
    const char* spec;
    const char* host;
    const char* port;
    bool mx;
  } cases[] = {
      {"[127.0.0.1]:2525", "127.0.0.1", "2525", false},
      {"[mx.example.test]", "mx.example.test", "25", false},
      {"[::1]:26", "::1", "26", false},
      {"example.test:587", "example.test", "587", true},
      {"example.test", "example.test", "25", true},
      {"dns:example.test:2525", "example.test", "2525", true},
      {"dns:example.test", "example.test", "25", true},
      {"127.0.0.1:25", "127.0.0.1", "25", false},      // an IP is never an MX
      {"localhost:2525", "localhost", "2525", false},  // RFC 6761
      {"a.localhost", "a.localhost", "25", false},
  };
  for (const auto& c : cases) {
    auto hop = ParseNextHop(c.spec);
    ASSERT_TRUE(hop.ok()) << c.spec << ": " << hop.status();
    EXPECT_EQ(hop->host, c.host) << c.spec;
    EXPECT_EQ(hop->port, c.port) << c.spec;
    EXPECT_EQ(hop->mx, c.mx) << c.spec;
  }
}

TEST(ParseNextHop, RefusesWhatIsNoNextHop) {
  for (const char* spec :
       {"", "[127.0.0.1", "[]:25", "[h]x", "[h]:0", "h:99999", "h:", "::1:25",
        "a b:25", "h:2x", "[h]:"}) {
    auto hop = ParseNextHop(spec);
    EXPECT_FALSE(hop.ok()) << spec;
    if (!hop.ok()) {
      EXPECT_EQ(hop.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(ResolveNextHop, AnIpLiteralNeedsNoLookup) {
  DnsOptions o;
  o.servers = {"127.0.0.1:1"};  // would fail if asked
  auto targets = ResolveNextHop({"127.0.0.1", "2525", false}, o);
  ASSERT_TRUE(targets.ok()) << targets.status();
  ASSERT_EQ(targets->size(), 1u);
  EXPECT_EQ((*targets)[0].endpoints.at(0).port(), 2525);
}

TEST(ResolveNextHop, LocalhostComesFromTheHostsFile) {
  DnsOptions o;
  o.servers = {"127.0.0.1:1"};
  o.timeout = std::chrono::milliseconds(2000);
  auto targets = ResolveNextHop({"localhost", "25", false}, o);
  ASSERT_TRUE(targets.ok()) << targets.status();
  ASSERT_FALSE(targets->empty());
  EXPECT_TRUE((*targets)[0].endpoints.at(0).address().is_loopback());
}

}  // namespace
}  // namespace sinkline::broker
