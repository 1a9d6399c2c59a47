// Session affinity: targets split per address, one replica per session,
// the same on every call, spread over the replicas, and stable when another
// replica goes away.
#include "sink_broker/affinity.h"

#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"

namespace sinkline::broker {
namespace {

TEST(Affinity, SplitsAddressLists) {
  EXPECT_EQ(
      SplitTarget("ipv4:127.0.0.1:7002,127.0.0.1:7001"),
      (std::vector<std::string>{"ipv4:127.0.0.1:7001", "ipv4:127.0.0.1:7002"}));
  EXPECT_EQ(SplitTarget("ipv6:[::1]:7001,[::1]:7002").size(), 2u);
  EXPECT_EQ(SplitTarget("unix:/run/sink.sock"),
            (std::vector<std::string>{"unix:/run/sink.sock"}));
  EXPECT_EQ(SplitTarget("127.0.0.1:7001"),
            (std::vector<std::string>{"ipv4:127.0.0.1:7001"}));
  EXPECT_EQ(SplitTarget("dns:///127.0.0.1:7001"),
            (std::vector<std::string>{"ipv4:127.0.0.1:7001"}));
  // Not looked up: the target as it is.
  EXPECT_EQ(SplitTarget("sink.example:7001", false),
            (std::vector<std::string>{"sink.example:7001"}));
}

TEST(Affinity, ResolvesANameToItsAddresses) {
  const auto got = SplitTarget("localhost:7001");
  ASSERT_FALSE(got.empty());
  for (const auto& t : got) {
    EXPECT_TRUE(t.rfind("ipv4:", 0) == 0 || t.rfind("ipv6:", 0) == 0) << t;
  }
}

TEST(Affinity, OneStableReplicaPerSession) {
  const std::vector<std::string> r = {"ipv4:10.0.0.1:1", "ipv4:10.0.0.2:1",
                                      "ipv4:10.0.0.3:1"};
  EXPECT_EQ(PickReplica({}, "s"), "");
  std::map<std::string, int> spread;
  for (int i = 0; i < 3000; ++i) {
    const std::string id = absl::StrCat("session-", i);
    const std::string pick = PickReplica(r, id);
    EXPECT_EQ(pick, PickReplica(r, id));
    EXPECT_EQ(pick,
              AffinityTarget("ipv4:10.0.0.3:1,10.0.0.1:1,10.0.0.2:1", id));
    ++spread[pick];
  }
  for (const auto& t : r) {
    EXPECT_GT(spread[t], 800) << t;
    EXPECT_LT(spread[t], 1200) << t;
  }
  // A replica that goes away moves only its own sessions.
  const std::vector<std::string> two = {r[0], r[1]};
  for (int i = 0; i < 1000; ++i) {
    const std::string id = absl::StrCat("session-", i);
    const std::string before = PickReplica(r, id);
    if (before != r[2]) {
      EXPECT_EQ(PickReplica(two, id), before) << id;
    }
  }
}

}  // namespace
}  // namespace sinkline::broker
