#include "sinks/greylist/greylist.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace sinkline::sinks {
namespace {

using Decision = Greylist::Decision;

TEST(ClientNetwork, IPv4Slash24IPv6Slash64) {
  EXPECT_EQ(ClientNetwork("192.0.2.77"), "192.0.2.0/24");
  EXPECT_EQ(ClientNetwork("192.0.2.1"), ClientNetwork("192.0.2.254"));
  EXPECT_NE(ClientNetwork("192.0.2.1"), ClientNetwork("192.0.3.1"));
  EXPECT_EQ(ClientNetwork("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
  EXPECT_EQ(ClientNetwork("2001:db8:1:2::9"),
            ClientNetwork("2001:db8:1:2:ff::1"));
  EXPECT_EQ(ClientNetwork("::ffff:192.0.2.9"), "192.0.2.0/24");
  EXPECT_EQ(ClientNetwork("Not-An-IP"), "not-an-ip");
}

TEST(Greylist, KeyIsCaseInsensitiveAndNamesTheNullSender) {
  EXPECT_EQ(Greylist::Key("192.0.2.5", "Alice@Example.NET", "Bob@Example.Test"),
            "192.0.2.0/24\talice@example.net\tbob@example.test");
  EXPECT_EQ(Greylist::Key("192.0.2.5", "", "bob@example.test"),
            "192.0.2.0/24\t<>\tbob@example.test");
}

class FakeClock {
 public:
  absl::Time now = absl::FromUnixSeconds(1800000000);
  std::function<absl::Time()> fn() {
    return [this] { return now; };
  }
};

GreylistOptions Options(const std::string& state_file = "") {
  GreylistOptions o;
  o.delay = absl::Seconds(300);
  o.retry_window = absl::Hours(4);
  o.expire = absl::Hours(24 * 36);
  o.state_file = state_file;
  return o;
}

TEST(Greylist, FirstSightTooEarlyThenPassesThenKnown) {
  FakeClock clock;
  Greylist g(Options(), clock.fn());
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kFirstSeen);
  clock.now += absl::Seconds(299);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kTooEarly);
  // Another host of the same /24 is the same client.
  clock.now += absl::Seconds(1);
  EXPECT_EQ(g.Check("192.0.2.200", "A@X.net", "b@y.test"), Decision::kPassed);
  clock.now += absl::Hours(24 * 30);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kKnown);
  // Each part of the triplet counts.
  EXPECT_EQ(g.Check("192.0.3.1", "a@x.net", "b@y.test"), Decision::kFirstSeen);
  EXPECT_EQ(g.Check("192.0.2.1", "c@x.net", "b@y.test"), Decision::kFirstSeen);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "d@y.test"), Decision::kFirstSeen);
  EXPECT_EQ(g.size(), 4u);
}

TEST(Greylist, EntriesExpire) {
  FakeClock clock;
  Greylist g(Options(), clock.fn());
  // Not retried within the retry window: forgotten, greylisted anew.
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kFirstSeen);
  clock.now += absl::Hours(4) + absl::Seconds(1);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kFirstSeen);
  clock.now += absl::Seconds(300);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kPassed);
  // A passed triplet stays while it is seen...
  clock.now += absl::Hours(24 * 35);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kKnown);
  // ...and is forgotten after `expire` without traffic.
  clock.now += absl::Hours(24 * 36) + absl::Seconds(1);
  EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kFirstSeen);
}

class GreylistFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/greylist-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/greylist.state";
  }
  void TearDown() override {
    for (const auto& f : Files()) std::remove((dir_ + "/" + f).c_str());
    rmdir(dir_.c_str());
  }
  std::vector<std::string> Files() {
    std::vector<std::string> out;
    DIR* d = opendir(dir_.c_str());
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    closedir(d);
    return out;
  }
  std::string dir_;
  std::string path_;
};

TEST_F(GreylistFileTest, StateSurvivesARestart) {
  FakeClock clock;
  {
    Greylist g(Options(path_), clock.fn());
    ASSERT_TRUE(g.Load().ok());  // no file yet: empty
    EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"),
              Decision::kFirstSeen);
    EXPECT_EQ(g.Check("192.0.2.1", "", "c@y.test"), Decision::kFirstSeen);
    clock.now += absl::Seconds(301);
    EXPECT_EQ(g.Check("192.0.2.1", "", "c@y.test"), Decision::kPassed);
    ASSERT_TRUE(g.Save().ok());
  }
  // Only the state file is left: the temporary file was renamed.
  EXPECT_EQ(Files(), std::vector<std::string>{"greylist.state"});
  Greylist g2(Options(path_), clock.fn());
  ASSERT_TRUE(g2.Load().ok());
  EXPECT_EQ(g2.size(), 2u);
  EXPECT_EQ(g2.Check("192.0.2.1", "a@x.net", "b@y.test"), Decision::kPassed);
  EXPECT_EQ(g2.Check("192.0.2.9", "", "c@y.test"), Decision::kKnown);
}

TEST_F(GreylistFileTest, DestructorSavesAndExpiredEntriesAreDropped) {
  FakeClock clock;
  {
    Greylist g(Options(path_), clock.fn());
    g.StartFlusher();
    EXPECT_EQ(g.Check("192.0.2.1", "a@x.net", "b@y.test"),
              Decision::kFirstSeen);
  }
  std::ifstream in(path_);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("192.0.2.0/24\ta@x.net\tb@y.test"),
            std::string::npos)
      << text.str();
  clock.now += absl::Hours(5);  // past the retry window
  Greylist g2(Options(path_), clock.fn());
  ASSERT_TRUE(g2.Load().ok());
  EXPECT_EQ(g2.size(), 0u);
}

TEST_F(GreylistFileTest, MalformedLinesAreSkipped) {
  {
    std::ofstream out(path_);
    out << "# header\n"
        << "garbage\n"
        << "1800000000000\t1800000000000\t1\t192.0.2.0/24\ta@x.net\tb@y.test\n";
  }
  FakeClock clock;
  Greylist g(Options(path_), clock.fn());
  ASSERT_TRUE(g.Load().ok());
  EXPECT_EQ(g.size(), 1u);
  EXPECT_EQ(g.Check("192.0.2.3", "a@x.net", "b@y.test"), Decision::kKnown);
}

TEST(GreylistSink, RefusesWith451And471) {
  FakeClock clock;
  Greylist g(Options(), clock.fn());
  GreylistSink sink(g, "Greylisted");
  sinkline::v1::SinkRequest req;
  req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_RCPT);
  req.mutable_event()->mutable_session()->mutable_client()->set_ip(
      "198.51.100.7");
  req.mutable_event()->mutable_envelope()->set_mail_from("a@x.net");
  req.mutable_event()->mutable_recipient()->set_address("b@y.test");
  {
    sdk::EventContext ctx(req);
    sink.Handle(ctx);
    EXPECT_EQ(ctx.verdict().action(), sinkline::v1::ACTION_CONSUME);
    EXPECT_EQ(ctx.verdict().reply().code(), 451u);
    EXPECT_EQ(ctx.verdict().reply().enhanced_code(), "4.7.1");
  }
  clock.now += absl::Seconds(300);
  sdk::EventContext ctx(req);
  sink.Handle(ctx);
  EXPECT_EQ(ctx.verdict().action(), sinkline::v1::ACTION_CONTINUE);
  EXPECT_FALSE(ctx.verdict().has_reply());
}

}  // namespace
}  // namespace sinkline::sinks
