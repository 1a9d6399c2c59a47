// One CIDR type for the edge's networks and the broker's `client=` rules.
#include "sinkline/common/cidr.h"

#include <gtest/gtest.h>

namespace sinkline {
namespace {

Cidr Block(const char* text) {
  auto c = Cidr::Parse(text);
  EXPECT_TRUE(c.ok()) << text << ": " << c.status();
  return c.ok() ? *c : Cidr();
}

TEST(Cidr, Ipv4) {
  const Cidr c = Block("192.168.1.0/23");
  EXPECT_TRUE(c.v4());
  EXPECT_EQ(c.prefix(), 23);
  EXPECT_TRUE(c.Contains("192.168.0.7"));
  EXPECT_TRUE(c.Contains("192.168.1.255"));
  EXPECT_FALSE(c.Contains("192.168.2.7"));
  EXPECT_FALSE(c.Contains("not an address"));
}

TEST(Cidr, BareAddressIsOneHost) {
  const Cidr c = Block("10.1.2.3");
  EXPECT_EQ(c.prefix(), 32);
  EXPECT_TRUE(c.Contains("10.1.2.3"));
  EXPECT_FALSE(c.Contains("10.1.2.4"));
  const Cidr v6 = Block("2001:db8::1");
  EXPECT_EQ(v6.prefix(), 128);
  EXPECT_TRUE(v6.Contains("2001:db8::1"));
  EXPECT_FALSE(v6.Contains("2001:db8::2"));
}

TEST(Cidr, Ipv6) {
  const Cidr c = Block("2001:db8::/32");
  EXPECT_FALSE(c.v4());
  EXPECT_TRUE(c.Contains("2001:db8:ff::1"));
  EXPECT_FALSE(c.Contains("2001:db9::1"));
  EXPECT_FALSE(c.Contains("::1"));
  // A zone names an interface, not a network.
  EXPECT_TRUE(Block("fe80::/10").Contains("fe80::1%eth0"));
}

TEST(Cidr, Ipv4MappedIsIpv4) {
  const Cidr c = Block("127.0.0.0/8");
  EXPECT_TRUE(c.Contains("127.0.0.1"));
  EXPECT_TRUE(c.Contains("::ffff:127.0.0.1"));
  // A mapped block in IPv6 form counts its prefix over 128 bits.
  const Cidr mapped = Block("::ffff:10.0.0.0/104");
  EXPECT_TRUE(mapped.v4());
  EXPECT_EQ(mapped.prefix(), 8);
  EXPECT_TRUE(mapped.Contains("10.9.9.9"));
  EXPECT_FALSE(mapped.Contains("11.0.0.1"));
  EXPECT_TRUE(Block("::ffff:10.1.2.3").Contains("10.1.2.3"));
  // An IPv6 block holds no IPv4 address, and the other way round.
  EXPECT_FALSE(Block("::/0").Contains("10.0.0.1"));
  EXPECT_FALSE(Block("0.0.0.0/0").Contains("2001:db8::1"));
  EXPECT_TRUE(Block("0.0.0.0/0").Contains("::ffff:10.0.0.1"));
}

TEST(Cidr, ErrorsSayWhereAndWhat) {
  size_t at = 99;
  auto bad_ip = Cidr::Parse("300.1.1.1", &at);
  ASSERT_FALSE(bad_ip.ok());
  EXPECT_EQ(bad_ip.status().message(), "'300.1.1.1' is not an IP address");
  EXPECT_EQ(at, 0u);
  auto bad_prefix = Cidr::Parse("10.0.0.0/33", &at);
  ASSERT_FALSE(bad_prefix.ok());
  EXPECT_EQ(bad_prefix.status().message(), "prefix length must be 0..32");
  EXPECT_EQ(at, 9u);
  EXPECT_FALSE(Cidr::Parse("2001:db8::/129").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/-1").ok());
  EXPECT_FALSE(Cidr::Parse(" 10.0.0.0").ok());
}

TEST(Cidr, Networks) {
  auto nets = ParseNetworks({" 127.0.0.0/8", "", "2001:db8::/32 "});
  ASSERT_TRUE(nets.ok()) << nets.status();
  EXPECT_EQ(nets->size(), 2u);
  EXPECT_TRUE(InNetworks(*nets, "127.0.0.1"));
  EXPECT_TRUE(InNetworks(*nets, "2001:db8::5"));
  EXPECT_FALSE(InNetworks(*nets, "10.0.0.1"));
  EXPECT_FALSE(InNetworks({}, "127.0.0.1"));
  auto bad = ParseNetworks({"10.0.0.0/8", "nonsense"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "bad network nonsense: 'nonsense' is not an IP address");
}

}  // namespace
}  // namespace sinkline
