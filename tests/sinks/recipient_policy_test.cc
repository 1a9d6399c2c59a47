#include "sinks/recipient_policy/recipient_policy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace sinkline::sinks {
namespace {

TEST(RecipientList, MatchesAddressesAndDomainsCaseInsensitively) {
  auto list = RecipientList::Parse(
      "# accepted recipients\n"
      "Bob@Example.TEST\n"
      "  carol@example.test   # trailing comment\n"
      "\n"
      "@Lists.Example.Test\r\n");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 3u);
  EXPECT_TRUE(list->Accepts("bob@example.test"));
  EXPECT_TRUE(list->Accepts("BOB@EXAMPLE.test"));
  EXPECT_TRUE(list->Accepts("carol@Example.Test"));
  EXPECT_TRUE(list->Accepts("anyone@lists.example.test"));
  EXPECT_TRUE(list->Accepts("Other@LISTS.example.TEST"));
  EXPECT_FALSE(list->Accepts("dave@example.test"));
  EXPECT_FALSE(list->Accepts("bob@example.testx"));
  EXPECT_FALSE(list->Accepts("bob@sub.example.test"));
  // A domain entry covers that domain, not its subdomains.
  EXPECT_FALSE(list->Accepts("x@a.lists.example.test"));
  EXPECT_FALSE(list->Accepts("postmaster"));
  EXPECT_FALSE(list->Accepts(""));
}

TEST(RecipientList, RefusesBadEntriesWithTheirLine) {
  auto list = RecipientList::Parse("bob@example.test\nnot-an-address\n");
  ASSERT_FALSE(list.ok());
  EXPECT_NE(list.status().message().find("line 2"), std::string::npos)
      << list.status();
  EXPECT_FALSE(RecipientList::Parse("bob@\n").ok());
  EXPECT_FALSE(RecipientList::Parse("bob smith@example.test\n").ok());
}

TEST(RecipientList, EmptyFileAcceptsNobody) {
  auto list = RecipientList::Parse("# nobody yet\n");
  ASSERT_TRUE(list.ok());
  EXPECT_FALSE(list->Accepts("bob@example.test"));
}

class RecipientPolicySinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/recipient-policy-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/recipients";
  }
  void TearDown() override {
    std::remove(path_.c_str());
    std::remove((path_ + ".new").c_str());
    rmdir(dir_.c_str());
  }
  void Write(const std::string& text) {
    // Written aside and renamed: the inode changes, as with a ConfigMap.
    {
      std::ofstream out(path_ + ".new", std::ios::binary | std::ios::trunc);
      out << text;
    }
    ASSERT_EQ(std::rename((path_ + ".new").c_str(), path_.c_str()), 0);
  }
  sinkline::v1::Verdict Rcpt(RecipientPolicySink& sink,
                             const std::string& address) {
    sinkline::v1::SinkRequest req;
    req.mutable_event()->set_type(sinkline::v1::EVENT_TYPE_RCPT);
    req.mutable_event()->mutable_recipient()->set_address(address);
    sdk::EventContext ctx(req);
    sink.Handle(ctx);
    return ctx.verdict();
  }
  std::string dir_;
  std::string path_;
};

TEST_F(RecipientPolicySinkTest, RejectsUnknownWith550And511) {
  Write("bob@example.test\n");
  auto sink =
      RecipientPolicySink::Create(path_, absl::ZeroDuration(), "user unknown");
  ASSERT_TRUE(sink.ok()) << sink.status();
  auto ok = Rcpt(**sink, "Bob@example.test");
  EXPECT_EQ(ok.action(), sinkline::v1::ACTION_CONTINUE);
  EXPECT_FALSE(ok.has_reply());
  auto no = Rcpt(**sink, "eve@example.test");
  EXPECT_EQ(no.action(), sinkline::v1::ACTION_CONSUME);
  EXPECT_EQ(no.reply().code(), 550u);
  EXPECT_EQ(no.reply().enhanced_code(), "5.1.1");
  ASSERT_EQ(no.reply().lines_size(), 1);
  EXPECT_EQ(no.reply().lines(0), "user unknown");
}

TEST_F(RecipientPolicySinkTest,
       ReloadsWhenTheFileChangesAndKeepsTheOldOnError) {
  Write("bob@example.test\n");
  auto sink = RecipientPolicySink::Create(path_, absl::ZeroDuration(), "no");
  ASSERT_TRUE(sink.ok()) << sink.status();
  EXPECT_FALSE((*sink)->Accepts("carol@example.test"));
  Write("bob@example.test\ncarol@example.test\n");
  EXPECT_TRUE((*sink)->Accepts("carol@example.test"));
  // A broken file is refused; the last good list stays.
  Write("bob@example.test\nbroken\n");
  EXPECT_TRUE((*sink)->Accepts("carol@example.test"));
  Write("@example.test\n");
  EXPECT_TRUE((*sink)->Accepts("zed@example.test"));
  EXPECT_FALSE((*sink)->Accepts("zed@example.net"));
}

TEST_F(RecipientPolicySinkTest, MissingFileFailsAtStart) {
  EXPECT_FALSE(
      RecipientPolicySink::Create(path_, absl::ZeroDuration(), "no").ok());
}

}  // namespace
}  // namespace sinkline::sinks
