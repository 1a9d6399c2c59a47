#include "sink_broker/smtp_relay.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace sinkline::broker {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

TEST(DotStuff, DotsThatStartLinesAreDoubled) {
  DotStuffState state;
  EXPECT_EQ(DotStuff(".a\r\nb.\r\n..c\r\n.\r\n", state),
            "..a\r\nb.\r\n...c\r\n..\r\n");
  EXPECT_TRUE(state.at_line_start);
}

TEST(DotStuff, StateCarriesAcrossChunks) {
  DotStuffState state;
  std::string out = DotStuff("line\r", state);
  out += DotStuff("\n", state);
  out += DotStuff(".x\r\n", state);
  EXPECT_EQ(out, "line\r\n..x\r\n");
  out = DotStuff("no newline at the end.", state);
  EXPECT_FALSE(state.at_line_start);
  EXPECT_EQ(DotStuff(".", state), ".");  // mid-line: left alone
}

TEST(DotStuff, BareLineFeedsBecomeCrLf) {
  DotStuffState state;
  EXPECT_EQ(DotStuff("a\n.b\r\nc\n", state), "a\r\n..b\r\nc\r\n");
  EXPECT_TRUE(state.at_line_start);
}

// A next hop on loopback: one thread per connection, fixed answers, and a
// record of every chunk it read and of how many connections it accepted.
class FakeNextHop {
 public:
  explicit FakeNextHop(bool pipelining) : pipelining_(pipelining) {
    acceptor_.open(tcp::v4());
    acceptor_.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    acceptor_.listen();
    accept_thread_ = std::thread([this] { Accept(); });
  }
  ~FakeNextHop() {
    boost::system::error_code ec;
    {
      // A blocking accept() does not wake when the acceptor closes: a last
      // connection wakes it.
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      held_ = false;
    }
    tcp::socket wake(io_);
    wake.connect(acceptor_.local_endpoint(), ec);
    accept_thread_.join();
    acceptor_.close(ec);
    {
      absl::MutexLock lock(&mu_);
      for (auto& s : sockets_) s->shutdown(tcp::socket::shutdown_both, ec);
    }
    for (auto& t : threads_) t.join();
  }
  std::string address() const {
    return "127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }
  std::string Received() {
    absl::MutexLock lock(&mu_);
    std::string all;
    for (const auto& c : chunks_) all += c;
    return all;
  }
  std::vector<std::string> Chunks() {
    absl::MutexLock lock(&mu_);
    return chunks_;
  }
  int connections() {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(sockets_.size());
  }
  // While held, a new connection gets no greeting.
  void Hold(bool held) {
    absl::MutexLock lock(&mu_);
    held_ = held;
  }

 private:
  void Accept() {
    for (;;) {
      auto s = std::make_shared<tcp::socket>(io_);
      boost::system::error_code ec;
      acceptor_.accept(*s, ec);
      if (ec) return;
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      sockets_.push_back(s);
      threads_.emplace_back([this, s] { Serve(*s); });
    }
  }
  void Serve(tcp::socket& s) {
    boost::system::error_code ec;
    auto say = [&](const std::string& r) {
      asio::write(s, asio::buffer(r), ec);
    };
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](bool* held) { return !*held; }, &held_));
    }
    say("220 fake ESMTP\r\n");
    std::string in;
    bool data = false;
    char buf[65536];
    while (!ec) {
      const size_t n = s.read_some(asio::buffer(buf), ec);
      if (ec) return;
      {
        absl::MutexLock lock(&mu_);
        chunks_.emplace_back(buf, n);
      }
      in.append(buf, n);
      for (;;) {
        if (data) {
          const size_t end = in.find("\r\n.\r\n");
          if (end == std::string::npos) break;
          in.erase(0, end + 5);
          data = false;
          say("250 2.0.0 Ok: queued\r\n");
          continue;
        }
        const size_t eol = in.find("\r\n");
        if (eol == std::string::npos) break;
        const std::string line = in.substr(0, eol);
        in.erase(0, eol + 2);
        if (absl::StartsWithIgnoreCase(line, "EHLO")) {
          say(pipelining_ ? "250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                          : "250-fake\r\n250 8BITMIME\r\n");
        } else if (absl::StartsWithIgnoreCase(line, "DATA")) {
          say("354 go on\r\n");
          data = true;
          in.insert(0, "\r\n");  // the end may follow at once
        } else if (absl::StartsWithIgnoreCase(line, "QUIT")) {
          say("221 bye\r\n");
          return;
        } else {
          say("250 ok\r\n");
        }
      }
    }
  }

  const bool pipelining_;
  asio::io_context io_;
  tcp::acceptor acceptor_{io_};
  std::thread accept_thread_;
  absl::Mutex mu_;
  std::vector<std::shared_ptr<tcp::socket>> sockets_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> chunks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
};

class SmtpRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ =
        (std::filesystem::path(::testing::TempDir()) /
         ("relay-" +
          std::string(
              ::testing::UnitTest::GetInstance()->current_test_info()->name()) +
          ".msg"))
            .string();
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void WriteMessage(const std::string& content) {
    std::ofstream(path_, std::ios::binary) << content;
  }
  static SmtpRelayOptions Options(const FakeNextHop& hop) {
    SmtpRelayOptions o;
    o.next_hop = hop.address();
    o.connect_timeout = std::chrono::milliseconds(2000);
    o.command_timeout = std::chrono::milliseconds(2000);
    return o;
  }
  static v1::QueueEntry Entry(const std::string& from = "a@example.test") {
    v1::QueueEntry e;
    e.set_queue_id("Q");
    e.mutable_envelope()->set_mail_from(from);
    e.mutable_envelope()->add_recipients()->set_address("b@example.test");
    e.mutable_envelope()->add_recipients()->set_address("c@example.test");
    return e;
  }
  std::string path_;
};

TEST_F(SmtpRelayTest, ABodyEndingInABareLineFeedGetsCrLfBeforeTheDot) {
  FakeNextHop hop(false);
  WriteMessage("Subject: x\r\n\r\nends bare\n");
  SmtpRelayBackend relay(Options(hop));
  auto r = relay.Submit(Entry(), path_);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string got = hop.Received();
  EXPECT_NE(got.find("\r\nends bare\r\n.\r\n"), std::string::npos) << got;
  EXPECT_EQ(got.find("bare\n."), std::string::npos) << got;
}

TEST_F(SmtpRelayTest, CommandsWithCrOrLfAreNeverWritten) {
  FakeNextHop hop(true);
  WriteMessage("Subject: x\r\n\r\nbody\r\n");
  SmtpRelayBackend relay(Options(hop));
  auto r = relay.Submit(
      Entry("a@example.test>\r\nRCPT TO:<injected@example.org"), path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition)
      << r.status();
  EXPECT_EQ(hop.Received().find("injected"), std::string::npos);
}

TEST_F(SmtpRelayTest, ConnectionsAreReusedWithRsetAndPipelined) {
  FakeNextHop hop(true);
  WriteMessage("Subject: x\r\n\r\nbody\r\n");
  SmtpRelayBackend relay(Options(hop));
  for (int i = 0; i < 5; ++i) {
    auto r = relay.Submit(Entry(), path_);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_EQ(hop.connections(), 1);
  const std::string got = hop.Received();
  size_t rsets = 0;
  for (size_t at = got.find("RSET\r\n"); at != std::string::npos;
       at = got.find("RSET\r\n", at + 1)) {
    ++rsets;
  }
  EXPECT_EQ(rsets, 4u) << got;
  // MAIL, both RCPTs and DATA went in one write.
  bool batched = false;
  for (const auto& c : hop.Chunks()) {
    batched |= absl::StrContains(c, "MAIL FROM:<a@example.test>") &&
               absl::StrContains(c, "RCPT TO:<c@example.test>\r\nDATA\r\n");
  }
  EXPECT_TRUE(batched) << got;
}

TEST_F(SmtpRelayTest, WithoutPipeliningOneCommandAtATimeAndTheReuseLimit) {
  FakeNextHop hop(false);
  WriteMessage("Subject: x\r\n\r\nbody\r\n");
  SmtpRelayOptions o = Options(hop);
  o.reuse_limit = 2;
  SmtpRelayBackend relay(o);
  for (int i = 0; i < 4; ++i) {
    auto r = relay.Submit(Entry(), path_);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_EQ(hop.connections(), 2);
  for (const auto& c : hop.Chunks()) {
    EXPECT_FALSE(absl::StrContains(c, "MAIL FROM") &&
                 absl::StrContains(c, "RCPT TO"))
        << c;
  }
}

TEST_F(SmtpRelayTest, DeliveriesInFlightHoldNoThreadAndWaitForTheWindow) {
  FakeNextHop hop(true);
  hop.Hold(true);  // connections open, but nothing is answered
  WriteMessage("Subject: x\r\n\r\nbody\r\n");
  SmtpRelayOptions o = Options(hop);
  o.command_timeout = std::chrono::milliseconds(20000);
  o.initial_destination_concurrency = 3;
  o.destination_concurrency = 3;
  SmtpRelayBackend relay(o);
  absl::Mutex mu;
  int done = 0;
  int ok = 0;
  constexpr int kMessages = 10;
  // Every call returns at once, from this one thread.
  for (int i = 0; i < kMessages; ++i) {
    relay.SubmitAsync(Entry(), path_, [&](absl::StatusOr<SubmitOutcome> r) {
      absl::MutexLock lock(&mu);
      ++done;
      ok += r.ok();
    });
  }
  for (int i = 0; i < 100 && hop.connections() < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(hop.connections(), 3);  // the window, not one per message
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(done, 0);
  }
  hop.Hold(false);
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(
                                +[](int* n) { return *n == kMessages; }, &done),
                            absl::Seconds(30)));
    EXPECT_EQ(ok, kMessages);
  }
  // The three connections carried them all, from the cache.
  EXPECT_EQ(hop.connections(), 3);
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
