// The session state machine with strings in and replies out, against a fake
// broker. Every transcript is also fed one byte at a time.
#include "smtp_edge/session.h"

#include <crypt.h>
#include <gtest/gtest.h>

#include <deque>
#include <memory>

#include "absl/strings/escaping.h"
#include "smtp_edge/parser.h"
#include "smtp_edge/policy.h"
#include "tests/smtp_edge/session_test_util.h"

namespace sinkline::edge {
namespace {

std::vector<Transcript> Transcripts() {
  const std::string long_line(998, 'x');
  return {
      {"ehlo", "EHLO c.example\r\n", kEhloReply},
      {"helo", "HELO c.example\r\n", "250 mx.example.test\r\n"},
      {"helo needs a name", "HELO\r\n", "501 5.5.4 Syntax: HELO hostname\r\n"},
      {"mail before helo", "MAIL FROM:<a@b.example>\r\n",
       "503 5.5.1 Error: send HELO/EHLO first\r\n"},
      {"full transaction pipelined",
       "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT "
       "TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
       kEhloReply +
           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with "
           "<CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 "
           "Bye\r\n"},
      {"rcpt before mail", "HELO c\r\nRCPT TO:<c@d.example>\r\n",
       "250 mx.example.test\r\n503 5.5.1 Error: need MAIL command\r\n"},
      {"data without recipients", "HELO c\r\nMAIL FROM:<>\r\nDATA\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n554 5.5.1 Error: no valid "
       "recipients\r\n"},
      {"nested mail", "HELO c\r\nMAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n503 5.5.1 Error: nested MAIL "
       "command\r\n"},
      {"bad paths",
       "HELO c\r\nMAIL FROM:a@b.c\r\nMAIL FROM:<a b@c.d>\r\nMAIL "
       "FROM:<a@b.c>\r\nRCPT TO:<>\r\nRCPT TO:<nodomain>\r\n",
       "250 mx.example.test\r\n501 5.5.4 Syntax error: address must be in "
       "<>\r\n501 5.1.7 Bad sender address syntax\r\n250 2.1.0 Ok\r\n501 "
       "5.5.4 Null address not allowed here\r\n501 5.1.3 Bad recipient "
       "address syntax\r\n"},
      {"size too big", "HELO c\r\nMAIL FROM:<a@b.c> SIZE=99999999999\r\n",
       "250 mx.example.test\r\n552 5.3.4 Message size exceeds fixed "
       "limit\r\n"},
      {"rset noop vrfy help", "RSET\r\nNOOP\r\nVRFY bob\r\nHELP\r\n",
       "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n252 2.5.0 Cannot VRFY user, but will "
       "accept message and attempt delivery\r\n214 2.0.0 Commands: EHLO HELO "
       "MAIL RCPT DATA RSET NOOP VRFY HELP QUIT STARTTLS AUTH BDAT\r\n"},
      {"unknown verb", "XYZZY\r\n",
       "500 5.5.2 Error: command not recognized\r\n"},
      {"bare LF command", "NOOP\n",
       "500 5.5.2 Error: bare LF in command; "
       "lines must end with CRLF\r\n"},
      {"bare CR command", "NO\rOP\r\n",
       "500 5.5.2 Error: bare CR in command; "
       "lines must end with CRLF\r\n"},
      {"command line too long", std::string(600, 'A') + "\r\nNOOP\r\n",
       "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"},
      {"bare LF in data is refused after the real end",
       "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nx\n.\nstill "
       "data\r\n.\r\nNOOP\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data "
       "with <CR><LF>.<CR><LF>\r\n550 5.6.0 Error: bare CR or LF in message; "
       "lines must end with CRLF\r\n250 2.0.0 Ok\r\n"},
      {"998-octet line passes, 999 does not",
       "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n" +
           long_line +
           "\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT "
           "TO:<c@d.e>\r\nDATA\r\n" +
           long_line + "x\r\n.\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data "
       "with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n250 2.1.0 "
       "Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n550 "
       "5.6.0 Error: message line longer than 1000 octets\r\n"},
      {"quit closes", "QUIT\r\nNOOP\r\n", "221 2.0.0 Bye\r\n"},
  };
}

class SessionTranscript : public ::testing::TestWithParam<bool> {};

TEST_P(SessionTranscript, Table) {
  for (const auto& t : Transcripts()) {
    FakeWorld w;
    EXPECT_EQ(Play(t, GetParam(), w), t.output) << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, SessionTranscript,
                         ::testing::Bool());

TEST(Session, GreetingAndConnectEventNotifyOnlyWhenUnbound) {
  FakeWorld w;
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s({}, info, &w);
  s.SetBindingMap({});
  s.Start();
  EXPECT_EQ(w.written, "220 mx.example.test ESMTP Sinkline\r\n");
  ASSERT_EQ(w.events.size(), 1u);
  EXPECT_EQ(w.events[0].type(), v1::EVENT_TYPE_CONNECT);
  EXPECT_TRUE(w.notify[0]);
}

TEST(Session, DotUnstuffingAndExactContent) {
  for (bool bytewise : {false, true}) {
    FakeWorld w;
    Transcript t{"content",
                 "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n"
                 "Subject: s\r\n\r\n.leading dot\r\n..two\r\n.\r\n",
                 ""};
    Play(t, bytewise, w);
    EXPECT_EQ(w.data, "Subject: s\r\n\r\nleading dot\r\n.two\r\n");
    const v1::Event& eod = w.events.back();
    EXPECT_EQ(eod.type(), v1::EVENT_TYPE_EOD);
    EXPECT_EQ(eod.message_size(), w.data.size());
    EXPECT_EQ(eod.envelope().mail_from(), "a@b.c");
    ASSERT_EQ(eod.envelope().recipients_size(), 1);
    EXPECT_EQ(eod.envelope().recipients(0).address(), "c@d.e");
    EXPECT_FALSE(eod.transaction_id().empty());
    EXPECT_EQ(w.data_tx, eod.transaction_id());
  }
}

TEST(Session, LargeMessageGoesInBoundedChunks) {
  FakeWorld w;
  std::string body;
  for (int i = 0; i < 5000; ++i)
    body += "line of text number " + std::to_string(i) + "\r\n";
  Transcript t{"big",
               "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n" +
                   body + ".\r\n",
               ""};
  Play(t, false, w);
  EXPECT_EQ(w.data, body);
  EXPECT_GT(w.chunks, 1);
}

TEST(Session, SmugglingSequencesNeverEndData) {
  const char* tricks[] = {"\n.\n",   "\n.\r\n", "\r.\r",
                          "\r\n.\n", "\r\n.\r", "\r.\r\n"};
  for (const char* trick : tricks) {
    for (bool bytewise : {false, true}) {
      FakeWorld w;
      Transcript t{"smuggle",
                   std::string("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT "
                               "TO:<c@d.e>\r\nDATA\r\nhead") +
                       trick +
                       "MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@w.x>\r\nDATA\r\n"
                       "smuggled\r\n.\r\n",
                   ""};
      const std::string out = Play(t, bytewise, w);
      // One DATA, one end: the smuggled commands are content, and the
      // message is refused for its bare line endings.
      EXPECT_NE(out.find("550 5.6.0"), std::string::npos) << trick;
      EXPECT_EQ(out.find("2.1.0 Ok\r\n250 2.1.0"), std::string::npos);
      for (const auto& e : w.events) {
        EXPECT_NE(e.type(), v1::EVENT_TYPE_EOD) << trick;
      }
    }
  }
}

TEST(Session, SinkRefusalOfOneRecipient) {
  FakeWorld w;
  v1::Reply no;
  no.set_code(550);
  no.set_enhanced_code("5.1.1");
  no.add_lines("no such user");
  w.overrides[v1::EVENT_TYPE_RCPT] = no;
  Transcript t{"refused",
               "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@d.e>\r\nDATA\r\n",
               "250 mx.example.test\r\n250 2.1.0 Ok\r\n550 5.1.1 no such "
               "user\r\n554 5.5.1 Error: no valid recipients\r\n",
               {v1::EVENT_TYPE_RCPT}};
  EXPECT_EQ(Play(t, false, w), t.output);
  EXPECT_FALSE(w.notify[3]);  // RCPT waited for the broker
}

TEST(Session, MailRefusedBySinkEndsTheTransactionId) {
  FakeWorld w;
  v1::Reply no;
  no.set_code(550);
  no.set_enhanced_code("5.7.1");
  no.add_lines("sender refused");
  w.overrides[v1::EVENT_TYPE_MAIL] = no;
  Transcript t{"mail refused",
               "HELO c\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\nMAIL "
               "FROM:<d@b.c>\r\n",
               "250 mx.example.test\r\n550 5.7.1 sender refused\r\n250 "
               "2.0.0 Ok\r\n550 5.7.1 sender refused\r\n",
               {v1::EVENT_TYPE_MAIL}};
  EXPECT_EQ(Play(t, false, w), t.output);
  // CONNECT, HELO, MAIL, NOOP, MAIL: the NOOP is outside any transaction,
  // and the second MAIL starts a transaction of its own.
  ASSERT_EQ(w.events.size(), 5u);
  const std::string first = w.events[2].transaction_id();
  EXPECT_FALSE(first.empty());
  EXPECT_EQ(w.events[3].type(), v1::EVENT_TYPE_NOOP);
  EXPECT_EQ(w.events[3].transaction_id(), "");
  EXPECT_FALSE(w.events[4].transaction_id().empty());
  EXPECT_NE(w.events[4].transaction_id(), first);
}

TEST(Session, BrokerLostAnswers451Then421) {
  FakeWorld w;
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s({}, Trusted(), info, &w);
  s.SetBindingMap({});
  s.Start();
  s.Feed(
      "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nx\r\n.\r\n");
  ASSERT_TRUE(s.waiting());  // EOD always waits for COMMIT
  w.written.clear();
  s.OnBrokerLost();
  EXPECT_EQ(w.written,
            "451 4.3.0 Error: queue unavailable, message not accepted\r\n");
  s.Feed("NOOP\r\n");
  EXPECT_EQ(w.written.substr(w.written.find("\r\n") + 2),
            "421 4.3.0 mx.example.test Service not available, closing "
            "transmission channel\r\n");
  EXPECT_TRUE(w.closed);
}

// A broker answer to EOD without a reply code is a broken answer: the
// message must not be reported as accepted.
TEST(Session, EodReplyWithoutCodeIs451) {
  FakeWorld w;
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s({}, Trusted(), info, &w);
  s.SetBindingMap({});
  s.Start();
  s.Feed(
      "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nx\r\n.\r\n");
  ASSERT_TRUE(s.waiting());  // EOD always waits for COMMIT
  w.written.clear();
  w.overrides[v1::EVENT_TYPE_EOD] = v1::Reply();  // code 0
  w.AnswerAll(s);
  EXPECT_EQ(w.written.substr(0, 10), "451 4.3.0 ") << w.written;
  s.Feed("MAIL FROM:<a@b.c>\r\n");  // the transaction is over
  w.AnswerAll(s);
  EXPECT_NE(w.written.find("250 2.1.0"), std::string::npos) << w.written;
}

TEST(Parser, Paths) {
  auto p =
      ParsePathArgument("FROM:<a@b.c> BODY=8BITMIME size=10", "FROM:", true);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->address, "a@b.c");
  ASSERT_EQ(p->params.size(), 2u);
  EXPECT_EQ(p->params[1].first, "SIZE");
  EXPECT_EQ(p->params[1].second, "10");
  EXPECT_TRUE(ParsePathArgument("from: <>", "FROM:", true).ok());
  EXPECT_EQ(ParsePathArgument("TO:<@relay.x:u@d.e>", "TO:", false)->address,
            "u@d.e");
  EXPECT_FALSE(ParsePathArgument("TO:<u@d.e", "TO:", false).ok());
  EXPECT_FALSE(ParsePathArgument("TO:<u@d.e>junk", "TO:", false).ok());
  EXPECT_EQ(ParseCommand("mail FROM:<x>").verb, "MAIL");
  EXPECT_EQ(ParseCommand("QUIT").argument, "");
}

TEST(Parser, QuotedLocalParts) {
  // The path ends at the first '>' outside the quotes; the address is kept
  // byte for byte, quotes and quoted-pairs included.
  auto p = ParsePathArgument("TO:<\"quoted local\"@example.test> NOTIFY=NEVER",
                             "TO:", false);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->address, "\"quoted local\"@example.test");
  ASSERT_EQ(p->params.size(), 1u);
  p = ParsePathArgument("TO:<\"a>b \\\" c\"@example.test>", "TO:", false);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->address, "\"a>b \\\" c\"@example.test");
  EXPECT_TRUE(ValidMailbox(p->address, false));
  p = ParsePathArgument("TO:<@relay.x:\"u v\"@d.e>", "TO:", false);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->address, "\"u v\"@d.e");
  EXPECT_FALSE(ParsePathArgument("TO:<\"u>", "TO:", false).ok());
  EXPECT_FALSE(ParsePathArgument("TO:<\"u\\\">", "TO:", false).ok());
}

// --- STARTTLS, AUTH and relay control ---

// A crypt(3) SHA-512 hash of `password`, as `openssl passwd -6` makes.
}  // namespace
}  // namespace sinkline::edge
