#include "sinkline/common/flags.h"

#include <gtest/gtest.h>

namespace sinkline {
namespace {

TEST(NormalizeFlagName, DashesInNameBecomeUnderscores) {
  EXPECT_EQ(NormalizeFlagName("--port-file=/a-b/c"), "--port_file=/a-b/c");
  EXPECT_EQ(NormalizeFlagName("--log-json"), "--log_json");
  EXPECT_EQ(NormalizeFlagName("--listen=127.0.0.1:0"), "--listen=127.0.0.1:0");
}

TEST(NormalizeFlagName, LeavesOtherArgumentsAlone) {
  EXPECT_EQ(NormalizeFlagName("-v"), "-v");
  EXPECT_EQ(NormalizeFlagName("file-name"), "file-name");
  EXPECT_EQ(NormalizeFlagName("--"), "--");
}

}  // namespace
}  // namespace sinkline
