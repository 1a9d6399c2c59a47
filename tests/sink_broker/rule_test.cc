#include "sink_broker/rule.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

using sinkline::v1::Event;

Event MakeEvent(sinkline::v1::EventType type, std::string from,
                std::vector<std::string> rcpts, std::string at_hand = "",
                std::string helo = "", std::string ip = "192.0.2.10",
                std::string auth = "") {
  Event e;
  e.set_type(type);
  e.mutable_envelope()->set_mail_from(from);
  for (auto& r : rcpts) e.mutable_envelope()->add_recipients()->set_address(r);
  e.mutable_recipient()->set_address(at_hand);
  e.mutable_session()->set_helo_name(helo);
  e.mutable_session()->mutable_client()->set_ip(ip);
  e.mutable_session()->set_auth_identity(auth);
  return e;
}

TEST(GlobMatch, Table) {
  struct Case {
    const char* pattern;
    const char* text;
    bool match;
  } cases[] = {
      {"*", "", true},
      {"*", "anything", true},
      {"*@example.com", "alice@example.com", true},
      {"*@example.com", "Alice@EXAMPLE.com", true},
      {"*@example.com", "alice@example.com.evil", false},
      {"a*b*c", "axxbyyc", true},
      {"a*b*c", "axxbyy", false},
      {"*.example.net", "mx.example.net", true},
      {"*.example.net", "example.net", false},
      {"exact@x", "exact@x", true},
      {"exact@x", "exact@xy", false},
      {"**a", "a", true},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(GlobMatch(c.pattern, c.text), c.match)
        << c.pattern << " ~ " << c.text;
  }
}

TEST(Rule, EmptyMatchesEverything) {
  auto r = Rule::Parse("");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
  EXPECT_TRUE(r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "", {})));
}

TEST(Rule, ClassicRuleAllConditionsMustHold) {
  auto r = Rule::Parse(
      "mail from=*@example.com;rcpt to=*@corp.example;ehlo=*.example.net;"
      "client=192.0.2.0/24");
  ASSERT_TRUE(r.ok()) << r.status();
  auto good = MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "a@Example.com",
                        {"x@other.example", "b@CORP.example"}, "",
                        "mx.example.net", "192.0.2.99");
  EXPECT_TRUE(r->Matches(good));
  auto wrong_ip = good;
  wrong_ip.mutable_session()->mutable_client()->set_ip("198.51.100.1");
  EXPECT_FALSE(r->Matches(wrong_ip));
  auto wrong_from = good;
  wrong_from.mutable_envelope()->set_mail_from("a@example.org");
  EXPECT_FALSE(r->Matches(wrong_from));
  auto wrong_helo = good;
  wrong_helo.mutable_session()->set_helo_name("example.net");
  EXPECT_FALSE(r->Matches(wrong_helo));
}

TEST(Rule, RcptEventLooksAtRecipientAtHand) {
  auto r = Rule::Parse("rcpt to=*@corp.example");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_RCPT, "a@x",
                                   {"b@other"}, "c@corp.example")));
  EXPECT_FALSE(r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_RCPT, "a@x",
                                    {"b@corp.example"}, "c@other")));
}

TEST(Rule, AlternativesNegationAndNullSender) {
  auto r = Rule::Parse("mail from!=<>,*@bounce.example; rcpt to=a@x , b@y");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(
      r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "s@z", {"b@y"})));
  EXPECT_FALSE(
      r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "", {"b@y"})));
  EXPECT_FALSE(r->Matches(
      MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "q@bounce.example", {"b@y"})));
  EXPECT_FALSE(
      r->Matches(MakeEvent(sinkline::v1::EVENT_TYPE_EOD, "s@z", {"c@y"})));
}

TEST(Rule, ClientIpv6AndAuth) {
  auto r = Rule::Parse("client=2001:db8::/32,127.0.0.1;auth=*@example.com");
  ASSERT_TRUE(r.ok()) << r.status();
  auto e = MakeEvent(sinkline::v1::EVENT_TYPE_MAIL, "a@x", {}, "", "",
                     "2001:db8:1::5", "joe@example.com");
  EXPECT_TRUE(r->Matches(e));
  e.mutable_session()->mutable_client()->set_ip("127.0.0.1");
  EXPECT_TRUE(r->Matches(e));
  e.mutable_session()->mutable_client()->set_ip("127.0.0.2");
  EXPECT_FALSE(r->Matches(e));
  e.mutable_session()->mutable_client()->set_ip("127.0.0.1");
  e.mutable_session()->set_auth_identity("");
  EXPECT_FALSE(r->Matches(e));
}

TEST(Rule, ErrorsNameThePosition) {
  struct Case {
    const char* rule;
    const char* message;
  } cases[] = {
      {"mail form=*@x", "position 1: unknown key 'mail form'"},
      {"mail from=*@x;;rcpt to=y", "position 15: empty condition"},
      {"mail from=*@x;rcpt to", "position 15: expected key=value"},
      {"client=300.1.1.1", "position 8: '300.1.1.1' is not an IP address"},
      {"client=10.0.0.0/33", "position 17: prefix length must be 0..32"},
      {"rcpt to=a@x,,b@y", "position 13: empty value"},
      {";", "position 1: empty condition"},
  };
  for (const auto& c : cases) {
    auto r = Rule::Parse(c.rule);
    ASSERT_FALSE(r.ok()) << c.rule;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.message), std::string::npos)
        << c.rule << " -> " << r.status().message();
  }
}

}  // namespace
}  // namespace sinkline::broker
