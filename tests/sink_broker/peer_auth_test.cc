// Who may open a session stream (EdgeGuard) and the per-peer budgets.
#include "sink_broker/peer_auth.h"

#include <gtest/gtest.h>

#include "sink_broker/peer_limits.h"

namespace sinkline::broker {
namespace {

constexpr char kToken[] = "edge-token-0123456789abcdef";

PeerCredentials Call(std::string peer, const char* authorization = nullptr,
                     std::vector<std::string> names = {}, bool claim = false) {
  PeerCredentials c;
  c.peer = std::move(peer);
  if (authorization != nullptr) c.authorization = authorization;
  c.cert_names = std::move(names);
  c.lease_claim = claim;
  return c;
}

TEST(EdgeGuardTest, NobodyWithoutConfigurationOrFlag) {
  const EdgeGuard guard;
  const auto st = guard.Check(Call("ipv4:127.0.0.1:4000"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(st.error_message().find("--session-allow-loopback"),
            std::string::npos);
}

TEST(EdgeGuardTest, LoopbackOnlyWithTheFlag) {
  const EdgeGuard guard("", {}, /*allow_loopback=*/true);
  EXPECT_TRUE(guard.Check(Call("ipv4:127.0.0.6:4000")).ok());
  EXPECT_TRUE(guard.Check(Call("ipv6:[::1]:4000")).ok());
  EXPECT_EQ(guard.Check(Call("ipv4:10.0.0.7:4000")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // A sink's claim or a bearer token of another role: refused even here.
  EXPECT_EQ(
      guard.Check(Call("ipv4:127.0.0.1:1", nullptr, {}, true)).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(guard.Check(Call("ipv4:127.0.0.1:1", "Bearer lease-token-0123"))
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST(EdgeGuardTest, TokenAndCertificateNames) {
  const EdgeGuard guard(kToken, {"edge.sinkline.test"}, true);
  const std::string bearer = std::string("Bearer ") + kToken;
  EXPECT_TRUE(guard.Check(Call("ipv4:10.0.0.7:1", bearer.c_str())).ok());
  EXPECT_TRUE(
      guard.Check(Call("ipv4:10.0.0.7:1", nullptr, {"edge.sinkline.test"}))
          .ok());
  // Configured: loopback is no longer enough.
  EXPECT_EQ(guard.Check(Call("ipv4:127.0.0.1:1")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(guard
                .Check(Call("ipv4:10.0.0.7:1",
                            "Bearer edge-token-0123456789"
                            "abcdeX"))
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(
      guard.Check(Call("ipv4:10.0.0.7:1", nullptr, {"sink.test"})).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  // The edge's credential is what Admin refuses.
  EXPECT_TRUE(
      guard.PresentsEdgeCredential(Call("ipv4:1.2.3.4:1", bearer.c_str())));
  EXPECT_FALSE(guard.PresentsEdgeCredential(
      Call("ipv4:1.2.3.4:1", "Bearer operator-token-0123456")));
  // Identity for the per-edge limit: the certificate name, else the host.
  EXPECT_EQ(
      guard.Identity(Call("ipv4:10.0.0.7:1", nullptr, {"edge.sinkline.test"})),
      "cert:edge.sinkline.test");
  EXPECT_EQ(guard.Identity(Call("ipv4:10.0.0.7:4242", bearer.c_str())),
            "ipv4:10.0.0.7");
}

TEST(EdgeGuardTest, TokenFileRules) {
  EXPECT_FALSE(
      EdgeGuard::Make("/nonexistent/edge-token", {}, false, false).ok());
  EXPECT_FALSE(EdgeGuard::Make("", {"edge.test"}, false, /*ca=*/false).ok());
  EXPECT_TRUE(EdgeGuard::Make("", {"edge.test"}, false, /*ca=*/true).ok());
}

TEST(PeerBudgetTest, BoundedPerPeerAndGivenBack) {
  PeerBudget budget("test_budget", 3);
  EXPECT_TRUE(budget.Take("a", 2));
  EXPECT_FALSE(budget.Take("a", 2));  // 4 > 3
  EXPECT_TRUE(budget.Take("b", 3));   // another peer, its own budget
  {
    PeerShare share(&budget, "a");
    EXPECT_TRUE(share.Grow(1));
    EXPECT_FALSE(share.Grow(1));
    EXPECT_EQ(budget.held("a"), 3u);
  }  // given back
  EXPECT_EQ(budget.held("a"), 2u);
  budget.Give("a", 2);
  EXPECT_EQ(budget.held("a"), 0u);
  PeerBudget unlimited("test_unlimited", 0);
  EXPECT_TRUE(unlimited.Take("a", uint64_t{1} << 40));
}

}  // namespace
}  // namespace sinkline::broker
