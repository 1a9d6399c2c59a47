#include "sinkline/common/grpc_security.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sinkline {
namespace {

using grpc::StatusCode;

TEST(AdminGuardTest, WithoutCredentialsNobodyByDefault) {
  const AdminGuard guard;
  EXPECT_FALSE(guard.configured());
  for (const char* peer :
       {"ipv4:127.0.0.1:5000", "ipv4:127.0.0.6:15001", "ipv6:[::1]:5000",
        "unix:/run/broker.sock", "ipv4:10.0.0.7:5000"}) {
    const auto st = guard.Decide(peer, nullptr, {});
    EXPECT_EQ(st.error_code(), StatusCode::UNAUTHENTICATED) << peer;
    EXPECT_NE(st.error_message().find("--admin-allow-loopback"),
              std::string::npos);
  }
}

TEST(AdminGuardTest, WithoutCredentialsLoopbackWhenAllowed) {
  const AdminGuard guard("", {}, /*allow_loopback=*/true);
  EXPECT_FALSE(guard.configured());
  EXPECT_TRUE(guard.Decide("ipv4:127.0.0.1:5000", nullptr, {}).ok());
  EXPECT_TRUE(guard.Decide("ipv6:[::1]:5000", nullptr, {}).ok());
  EXPECT_TRUE(guard.Decide("unix:/run/broker.sock", nullptr, {}).ok());
  const auto remote = guard.Decide("ipv4:10.0.0.7:5000", nullptr, {});
  EXPECT_EQ(remote.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_NE(remote.error_message().find("--admin-token-file"),
            std::string::npos);
  // Loopback-looking text later in the address does not count.
  EXPECT_EQ(guard.Decide("ipv4:10.127.0.1:5000", nullptr, {}).error_code(),
            StatusCode::UNAUTHENTICATED);
}

TEST(AdminGuardTest, BearerToken) {
  const AdminGuard guard("0123456789abcdef-token", {});
  const std::string good = "Bearer 0123456789abcdef-token";
  const std::string bad = "Bearer 0123456789abcdef-tokeN";
  const std::string shorter = "Bearer 0123";
  const std::string basic = "Basic 0123456789abcdef-token";
  // Configured: loopback alone is no longer enough.
  EXPECT_EQ(guard.Decide("ipv4:127.0.0.1:1", nullptr, {}).error_code(),
            StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(guard.Decide("ipv4:10.0.0.7:1", &good, {}).ok());
  EXPECT_EQ(guard.Decide("ipv4:10.0.0.7:1", &bad, {}).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(guard.Decide("ipv4:10.0.0.7:1", &shorter, {}).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(guard.Decide("ipv4:10.0.0.7:1", &basic, {}).error_code(),
            StatusCode::PERMISSION_DENIED);
  // The refusal never echoes the token.
  EXPECT_EQ(
      guard.Decide("ipv4:10.0.0.7:1", &bad, {}).error_message().find("token-"),
      std::string::npos);
}

TEST(AdminGuardTest, ClientCertificateNames) {
  const AdminGuard guard("", {"operator.sinkline.test"});
  EXPECT_TRUE(
      guard.Decide("ipv4:10.0.0.7:1", nullptr, {"operator.sinkline.test"})
          .ok());
  EXPECT_EQ(guard.Decide("ipv4:10.0.0.7:1", nullptr, {"edge.sinkline.test"})
                .error_code(),
            StatusCode::UNAUTHENTICATED);
  // A token cannot stand in when none is configured.
  const std::string any = "Bearer anything-at-all-here";
  EXPECT_EQ(guard.Decide("ipv4:10.0.0.7:1", &any, {}).error_code(),
            StatusCode::PERMISSION_DENIED);
}

TEST(GrpcTlsTest, FlagsMustComeTogether) {
  // Without flags: plaintext, and LoadGrpcTls succeeds.
  ASSERT_TRUE(LoadGrpcTls().ok());
  EXPECT_FALSE(GrpcTls().enabled());
}

}  // namespace
}  // namespace sinkline
