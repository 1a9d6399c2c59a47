#include "sink_broker/smtp_relay.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

TEST(DotStuff, DotsThatStartLinesAreDoubled) {
  bool start = true;
  EXPECT_EQ(DotStuff(".a\r\nb.\r\n..c\r\n.\r\n", start),
            "..a\r\nb.\r\n...c\r\n..\r\n");
  EXPECT_TRUE(start);
}

TEST(DotStuff, StateCarriesAcrossChunks) {
  bool start = true;
  std::string out = DotStuff("line\r", start);
  out += DotStuff("\n", start);
  out += DotStuff(".x\r\n", start);
  EXPECT_EQ(out, "line\r\n..x\r\n");
  out = DotStuff("no newline at the end.", start);
  EXPECT_FALSE(start);
  EXPECT_EQ(DotStuff(".", start), ".");  // mid-line: left alone
}

TEST(SmtpRelay, UnreachableNextHopDefers) {
  SmtpRelayOptions o;
  o.next_hop = "127.0.0.1:1";  // nothing listens on port 1
  o.connect_timeout = std::chrono::milliseconds(2000);
  SmtpRelayBackend relay(o);
  v1::QueueEntry e;
  e.set_queue_id("Q");
  e.mutable_envelope()->add_recipients()->set_address("a@example.test");
  auto r = relay.Submit(e, "/dev/null");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("127.0.0.1:1"), absl::string_view::npos);
  EXPECT_EQ(relay.Describe(), "smtp-relay 127.0.0.1:1");
}

}  // namespace
}  // namespace sinkline::broker
