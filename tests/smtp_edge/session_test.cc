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

namespace sinkline::edge {
namespace {

// Records what the session asks for; answers bound events like a broker
// whose chains all continue (the native reply wins), unless told otherwise.
class FakeWorld : public SessionOutput {
 public:
  void Write(std::string bytes) override { written += bytes; }
  void SendEvent(const v1::Event& event, bool notify_only) override {
    events.push_back(event);
    notify.push_back(notify_only);
    if (!notify_only) pending.push_back(event);
  }
  void SendData(const std::string& tx, std::string chunk) override {
    data += chunk;
    data_tx = tx;
    chunks++;
  }
  void Close() override { closed = true; }
  void StartTls() override { tls_requested++; }

  // Answers pending events: the native reply, or `override_reply` for the
  // given type.
  void AnswerAll(Session& s) {
    while (!pending.empty()) {
      v1::Event e = pending.front();
      pending.pop_front();
      v1::EventResult r;
      r.set_sequence(e.sequence());
      *r.mutable_reply() = e.native_reply();
      if (e.type() == v1::EVENT_TYPE_EOD) {
        r.mutable_reply()->clear_lines();
        r.mutable_reply()->add_lines("Ok: queued as Q" +
                                     std::to_string(++queued));
      }
      auto it = overrides.find(e.type());
      if (it != overrides.end()) *r.mutable_reply() = it->second;
      s.OnResult(r);
    }
  }

  std::string written;
  std::vector<v1::Event> events;
  std::vector<bool> notify;
  std::deque<v1::Event> pending;
  std::map<int, v1::Reply> overrides;
  std::string data;
  std::string data_tx;
  int chunks = 0;
  int queued = 0;
  bool closed = false;
  int tls_requested = 0;
};

// The transcripts relay for the client (recipients in any domain); relay
// control has its own tests.
SessionPolicy Trusted() {
  SessionPolicy p;
  p.trusted_client = true;
  return p;
}

struct Transcript {
  const char* name;
  std::string input;
  std::string output;  // everything the client reads, greeting excluded
  std::vector<v1::EventType> bound = {};
};

std::string Play(const Transcript& t, bool byte_at_a_time, FakeWorld& w,
                 SessionLimits limits = {}, SessionPolicy policy = Trusted()) {
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s(limits, policy, info, &w);
  v1::BindingMap map;
  for (auto e : t.bound) map.add_events(e);
  s.SetBindingMap(map);
  s.Start();
  w.AnswerAll(s);
  w.written.clear();
  if (byte_at_a_time) {
    for (char c : t.input) {
      s.Feed(absl::string_view(&c, 1));
      w.AnswerAll(s);
    }
  } else {
    s.Feed(t.input);
    w.AnswerAll(s);
  }
  return w.written;
}

const std::string kEhloReply =
    "250-mx.example.test Hello c.example\r\n250-PIPELINING\r\n"
    "250-SIZE "
    "52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-"
    "CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

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

// --- STARTTLS, AUTH and relay control ---

// A crypt(3) SHA-512 hash of `password`, as `openssl passwd -6` makes.
std::string Sha512Crypt(const std::string& password) {
  auto data = std::make_unique<crypt_data>();
  return crypt_r(password.c_str(), "$6$testsalt$", data.get());
}

const Credentials& TestCredentials() {
  static const Credentials* c = [] {
    auto parsed = Credentials::Parse(
        "# users\nalice:" + Sha512Crypt("s3cret pass") + "\n\n");
    return new Credentials(*parsed);
  }();
  return *c;
}

SessionPolicy TlsPolicy() {
  SessionPolicy p;
  p.starttls = true;
  p.credentials = &TestCredentials();
  p.accepted_domains = {"example.test"};
  return p;
}

v1::TlsState TestTls() {
  v1::TlsState t;
  t.set_active(true);
  t.set_version("TLSv1.3");
  t.set_cipher("TLS_AES_256_GCM_SHA384");
  return t;
}

// Runs EHLO and STARTTLS, completes the "handshake", then feeds `input`
// (whole or one byte at a time) and returns what the client read after TLS.
std::string PlayAfterTls(Session& s, FakeWorld& w, const std::string& input,
                         bool byte_at_a_time) {
  s.SetBindingMap({});
  s.Start();
  s.Feed("EHLO c.example\r\nSTARTTLS\r\n");
  w.AnswerAll(s);
  EXPECT_EQ(w.tls_requested, 1);
  s.OnTlsStarted(TestTls());
  w.written.clear();
  if (byte_at_a_time) {
    for (char c : input) {
      s.Feed(absl::string_view(&c, 1));
      w.AnswerAll(s);
    }
  } else {
    s.Feed(input);
    w.AnswerAll(s);
  }
  return w.written;
}

v1::SessionInfo TestInfo() {
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  return info;
}

std::string Plain(const std::string& authzid, const std::string& user,
                  const std::string& pass) {
  return absl::Base64Escape(authzid + std::string(1, '\0') + user +
                            std::string(1, '\0') + pass);
}

class SessionTls : public ::testing::TestWithParam<bool> {};

TEST_P(SessionTls, StartTlsDiscardsPipelinedPlaintextAndStartsOver) {
  FakeWorld w;
  Session s({}, TlsPolicy(), TestInfo(), &w);
  s.SetBindingMap({});
  s.Start();
  w.written.clear();
  // A man in the middle appends commands after STARTTLS, hoping they are
  // taken as sent over TLS (CVE-2011-0411).
  const std::string input =
      "EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n"
      "RCPT TO:<victim@example.test>\r\n";
  if (GetParam()) {
    for (char c : input) {
      s.Feed(absl::string_view(&c, 1));
      w.AnswerAll(s);
    }
  } else {
    s.Feed(input);
    w.AnswerAll(s);
  }
  EXPECT_EQ(w.written,
            "250-mx.example.test Hello c.example\r\n250-PIPELINING\r\n"
            "250-SIZE "
            "52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-"
            "CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
            "250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(w.tls_requested, 1);
  EXPECT_TRUE(s.starting_tls());
  EXPECT_EQ(s.buffered(), 0u);
  // More plaintext before the handshake ends is dropped too.
  s.Feed("RSET\r\n");
  EXPECT_EQ(s.buffered(), 0u);
  w.written.clear();
  s.OnTlsStarted(TestTls());
  EXPECT_FALSE(s.starting_tls());
  EXPECT_EQ(w.written, "");  // the injected commands are gone
  // The session starts over: EHLO is required again.
  s.Feed("MAIL FROM:<a@b.example>\r\n");
  EXPECT_EQ(w.written, "503 5.5.1 Error: send HELO/EHLO first\r\n");
  w.written.clear();
  s.Feed("EHLO c.example\r\n");
  EXPECT_EQ(w.written,
            "250-mx.example.test Hello c.example\r\n250-PIPELINING\r\n"
            "250-SIZE "
            "52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-"
            "CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
            "250 AUTH PLAIN LOGIN\r\n");
  for (const auto& e : w.events) {
    EXPECT_NE(e.type(), v1::EVENT_TYPE_MAIL);  // the injected MAIL never ran
  }
  const v1::Event& ehlo = w.events.back();
  EXPECT_EQ(ehlo.type(), v1::EVENT_TYPE_EHLO);
  EXPECT_TRUE(ehlo.session().tls().active());
  EXPECT_EQ(ehlo.session().tls().version(), "TLSv1.3");
  w.written.clear();
  s.Feed("STARTTLS\r\n");
  EXPECT_EQ(w.written, "503 5.5.1 Error: TLS already active\r\n");
}

TEST_P(SessionTls, StartTlsWaitingForTheBrokerStillDropsPlaintext) {
  FakeWorld w;
  Session s({}, TlsPolicy(), TestInfo(), &w);
  v1::BindingMap map;
  map.add_events(v1::EVENT_TYPE_STARTTLS);
  s.SetBindingMap(map);
  s.Start();
  s.Feed("EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n");
  ASSERT_TRUE(s.waiting());  // STARTTLS waits for its sink
  EXPECT_FALSE(w.events.back().session().tls().active());
  w.AnswerAll(s);
  EXPECT_TRUE(s.starting_tls());
  EXPECT_EQ(s.buffered(), 0u);
  s.OnTlsStarted(TestTls());
  for (const auto& e : w.events) EXPECT_NE(e.type(), v1::EVENT_TYPE_MAIL);
}

TEST_P(SessionTls, StartTlsRefusals) {
  for (const auto& [policy, input, output] :
       std::vector<std::tuple<SessionPolicy, std::string, std::string>>{
           {SessionPolicy{}, "EHLO c\r\nSTARTTLS\r\n",
            "250-mx.example.test Hello c\r\n250-PIPELINING\r\n250-SIZE "
            "52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-"
            "CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n502 5.5.1 "
            "Error: command not implemented\r\n"},
           {TlsPolicy(), "HELO c\r\nSTARTTLS now\r\n",
            "250 mx.example.test\r\n501 5.5.4 Syntax: STARTTLS\r\n"},
           {TlsPolicy(), "HELO c\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n",
            "250 mx.example.test\r\n250 2.1.0 Ok\r\n503 5.5.1 Error: MAIL "
            "transaction in progress\r\n"},
       }) {
    FakeWorld w;
    EXPECT_EQ(Play({"", input, ""}, GetParam(), w, {}, policy), output)
        << input;
    EXPECT_EQ(w.tls_requested, 0);
  }
}

TEST_P(SessionTls, AuthNeedsTls) {
  FakeWorld w;
  SessionPolicy no_tls = TlsPolicy();
  no_tls.starttls = false;
  const std::string ir = "AUTH PLAIN " + Plain("", "alice", "s3cret pass");
  EXPECT_EQ(
      Play({"", "EHLO c\r\n" + ir + "\r\n", ""}, GetParam(), w, {}, TlsPolicy())
          .substr(w.written.rfind("\r\n", w.written.size() - 3) + 2),
      "530 5.7.0 Must issue a STARTTLS command first\r\n");
  FakeWorld w2;
  const std::string out =
      Play({"", "EHLO c\r\n" + ir + "\r\n", ""}, GetParam(), w2, {}, no_tls);
  EXPECT_EQ(out.substr(out.rfind("\r\n", out.size() - 3) + 2),
            "538 5.7.11 Encryption required for requested authentication "
            "mechanism\r\n");
  // Not even announced without TLS.
  EXPECT_EQ(out.find("AUTH"), std::string::npos);
  for (const auto& e : w2.events) EXPECT_NE(e.type(), v1::EVENT_TYPE_AUTH);
}

TEST_P(SessionTls, AuthExchanges) {
  const std::string user_b64 = absl::Base64Escape("alice");
  const std::string pass_b64 = absl::Base64Escape("s3cret pass");
  struct Case {
    const char* name;
    std::string input;
    std::string output;
    bool authenticated;
  };
  const std::vector<Case> cases = {
      {"plain with initial response",
       "EHLO c\r\nAUTH PLAIN " + Plain("", "alice", "s3cret pass") + "\r\n",
       "235 2.7.0 Authentication successful\r\n", true},
      {"plain with authzid = authcid",
       "EHLO c\r\nAUTH plain " + Plain("alice", "alice", "s3cret pass") +
           "\r\n",
       "235 2.7.0 Authentication successful\r\n", true},
      {"plain for another identity",
       "EHLO c\r\nAUTH PLAIN " + Plain("bob", "alice", "s3cret pass") + "\r\n",
       "535 5.7.8 Authentication credentials invalid\r\n", false},
      {"plain after an empty challenge",
       "EHLO c\r\nAUTH PLAIN\r\n" + Plain("", "alice", "s3cret pass") + "\r\n",
       "334 \r\n235 2.7.0 Authentication successful\r\n", true},
      {"plain wrong password",
       "EHLO c\r\nAUTH PLAIN " + Plain("", "alice", "s3cret") + "\r\n",
       "535 5.7.8 Authentication credentials invalid\r\n", false},
      {"plain unknown user",
       "EHLO c\r\nAUTH PLAIN " + Plain("", "mallory", "s3cret pass") + "\r\n",
       "535 5.7.8 Authentication credentials invalid\r\n", false},
      {"login",
       "EHLO c\r\nAUTH LOGIN\r\n" + user_b64 + "\r\n" + pass_b64 + "\r\n",
       "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication "
       "successful\r\n",
       true},
      {"login with initial response",
       "EHLO c\r\nAUTH LOGIN " + user_b64 + "\r\n" + pass_b64 + "\r\n",
       "334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n", true},
      {"login wrong password",
       "EHLO c\r\nAUTH LOGIN\r\n" + user_b64 + "\r\n" +
           absl::Base64Escape("nope") + "\r\n",
       "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication "
       "credentials invalid\r\n",
       false},
      {"cancelled", "EHLO c\r\nAUTH LOGIN\r\n*\r\nNOOP\r\n",
       "334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n250 2.0.0 "
       "Ok\r\n",
       false},
      {"bad base64", "EHLO c\r\nAUTH PLAIN\r\n!!!\r\n",
       "334 \r\n501 5.5.2 Error: invalid base64 data\r\n", false},
      {"unknown mechanism", "EHLO c\r\nAUTH CRAM-MD5\r\n",
       "504 5.5.4 Unrecognized authentication type\r\n", false},
      {"twice",
       "EHLO c\r\nAUTH PLAIN " + Plain("", "alice", "s3cret pass") +
           "\r\nAUTH PLAIN " + Plain("", "alice", "s3cret pass") + "\r\n",
       "235 2.7.0 Authentication successful\r\n503 5.5.1 Error: already "
       "authenticated\r\n",
       true},
      {"before EHLO",
       "AUTH PLAIN " + Plain("", "alice", "s3cret pass") + "\r\n",
       "503 5.5.1 Error: send EHLO first\r\n", false},
  };
  for (const auto& c : cases) {
    FakeWorld w;
    Session s({}, TlsPolicy(), TestInfo(), &w);
    std::string out = PlayAfterTls(s, w, c.input, GetParam());
    // Drop the EHLO reply.
    if (c.input.rfind("EHLO", 0) == 0) {
      out = out.substr(out.find("250 AUTH PLAIN LOGIN\r\n") + 22);
    }
    EXPECT_EQ(out, c.output) << c.name;
    EXPECT_EQ(s.info().auth_identity(), c.authenticated ? "alice" : "")
        << c.name;
    for (const auto& e : w.events) {
      // Never the secret, in any form, in any event.
      const std::string bytes = e.SerializeAsString();
      EXPECT_EQ(bytes.find("s3cret"), std::string::npos) << c.name;
      EXPECT_EQ(bytes.find(pass_b64), std::string::npos) << c.name;
      EXPECT_EQ(bytes.find(Plain("", "alice", "s3cret pass")),
                std::string::npos)
          << c.name;
      if (e.type() == v1::EVENT_TYPE_AUTH) {
        EXPECT_EQ(e.verb(), "AUTH");
        EXPECT_EQ(e.session().auth_identity(),
                  e.native_reply().code() == 235 ? "alice" : "")
            << c.name;
      }
    }
  }
}

TEST_P(SessionTls, AuthLinesMayBeLong) {
  // A long password (libcrypt takes up to 512 octets): the AUTH line is over
  // the 512-octet command limit but within RFC 4954's 12288.
  const std::string long_pass(400, 'p');
  auto hashed = Credentials::Parse("bob:" + Sha512Crypt(long_pass) + "\n");
  ASSERT_TRUE(hashed.ok());
  SessionPolicy policy = TlsPolicy();
  policy.credentials = &*hashed;
  FakeWorld w;
  Session s({}, policy, TestInfo(), &w);
  std::string out = PlayAfterTls(
      s, w,
      "EHLO c\r\nAUTH PLAIN " + Plain("", "bob", long_pass) +
          "\r\nAUTH LOGIN\r\nNOOP " + std::string(600, 'n') + "\r\n",
      GetParam());
  out = out.substr(out.find("250 AUTH PLAIN LOGIN\r\n") + 22);
  EXPECT_EQ(out,
            "235 2.7.0 Authentication successful\r\n503 5.5.1 Error: already "
            "authenticated\r\n500 5.5.2 Error: line too long\r\n");
}

TEST_P(SessionTls, AuthEventCarriesTheIdentity) {
  FakeWorld w;
  Session s({}, TlsPolicy(), TestInfo(), &w);
  PlayAfterTls(s, w,
               "EHLO c\r\nAUTH PLAIN " + Plain("", "alice", "s3cret pass") +
                   "\r\nMAIL FROM:<alice@example.test>\r\n",
               GetParam());
  const v1::Event* auth = nullptr;
  for (const auto& e : w.events) {
    if (e.type() == v1::EVENT_TYPE_AUTH) auth = &e;
  }
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->argument(), "PLAIN alice");
  EXPECT_EQ(auth->session().auth_identity(), "alice");
  EXPECT_EQ(auth->native_reply().code(), 235u);
  EXPECT_EQ(w.events.back().type(), v1::EVENT_TYPE_MAIL);
  EXPECT_EQ(w.events.back().session().auth_identity(), "alice");
  EXPECT_TRUE(w.events.back().session().tls().active());
}

TEST_P(SessionTls, RelayControl) {
  struct Case {
    const char* name;
    SessionPolicy policy;
    std::string rcpt;
    std::string reply;
  };
  SessionPolicy trusted = TlsPolicy();
  trusted.trusted_client = true;
  const std::string denied = "554 5.7.1 Relay access denied\r\n";
  const std::string ok = "250 2.1.5 Ok\r\n";
  const std::vector<Case> cases = {
      {"accepted domain", TlsPolicy(), "bob@example.test", ok},
      {"accepted domain, any case", TlsPolicy(), "bob@Example.TEST", ok},
      {"other domain", TlsPolicy(), "bob@elsewhere.example", denied},
      {"subdomain is another domain", TlsPolicy(), "bob@sub.example.test",
       denied},
      {"postmaster", TlsPolicy(), "postmaster", ok},
      {"trusted client", trusted, "bob@elsewhere.example", ok},
      {"default policy relays for nobody", SessionPolicy{}, "bob@example.test",
       denied},
  };
  for (const auto& c : cases) {
    FakeWorld w;
    const std::string out = Play(
        {"",
         "HELO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<" + c.rcpt + ">\r\n",
         ""},
        GetParam(), w, {}, c.policy);
    EXPECT_EQ(out, "250 mx.example.test\r\n250 2.1.0 Ok\r\n" + c.reply)
        << c.name;
    if (c.reply == denied) {
      for (const auto& e : w.events) {
        EXPECT_NE(e.type(), v1::EVENT_TYPE_RCPT) << c.name;
      }
    }
  }
  // Authenticated clients may relay.
  FakeWorld w;
  Session s({}, TlsPolicy(), TestInfo(), &w);
  const std::string out = PlayAfterTls(
      s, w,
      "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@elsewhere.example>"
      "\r\nRSET\r\nAUTH PLAIN " +
          Plain("", "alice", "s3cret pass") +
          "\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@elsewhere.example>\r\n",
      GetParam());
  EXPECT_NE(out.find("250 2.1.0 Ok\r\n" + denied), std::string::npos) << out;
  EXPECT_NE(out.find("235 2.7.0 Authentication successful\r\n250 2.1.0 "
                     "Ok\r\n250 2.1.5 Ok\r\n"),
            std::string::npos)
      << out;
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, SessionTls, ::testing::Bool());

TEST(Policy, Credentials) {
  const std::string sha = Sha512Crypt("pw one");
  auto data = std::make_unique<crypt_data>();
  const char* setting = crypt_gensalt_rn("$y$", 0, nullptr, 0, data->setting,
                                         sizeof data->setting);
  ASSERT_NE(setting, nullptr);
  const std::string yes = crypt_r("pw two", setting, data.get());
  ASSERT_EQ(yes.rfind("$y$", 0), 0u);
  auto c = Credentials::Parse("one:" + sha + "\ntwo:" + yes + "\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->size(), 2u);
  EXPECT_TRUE(c->Check("one", "pw one"));
  EXPECT_FALSE(c->Check("one", "pw two"));
  EXPECT_TRUE(c->Check("two", "pw two"));
  EXPECT_FALSE(c->Check("two", "pw one"));
  EXPECT_FALSE(c->Check("three", "pw one"));
  EXPECT_FALSE(c->Check("", ""));
  // Plain text is not a hash.
  EXPECT_FALSE(Credentials::Parse("one:secret\n").ok());
  EXPECT_FALSE(Credentials::Parse("no colon\n").ok());
  EXPECT_FALSE(Credentials::Load("/nonexistent/auth").ok());
}

TEST(Policy, Networks) {
  auto nets = ParseNetworks({"127.0.0.0/8", "10.1.2.3", "2001:db8::/32"});
  ASSERT_TRUE(nets.ok()) << nets.status();
  EXPECT_TRUE(InNetworks(*nets, "127.0.0.1"));
  EXPECT_TRUE(InNetworks(*nets, "127.255.0.9"));
  EXPECT_TRUE(InNetworks(*nets, "::ffff:127.0.0.1"));
  EXPECT_TRUE(InNetworks(*nets, "10.1.2.3"));
  EXPECT_FALSE(InNetworks(*nets, "10.1.2.4"));
  EXPECT_FALSE(InNetworks(*nets, "128.0.0.1"));
  EXPECT_TRUE(InNetworks(*nets, "2001:db8:ff::1"));
  EXPECT_FALSE(InNetworks(*nets, "2001:db9::1"));
  EXPECT_FALSE(InNetworks(*nets, "::1"));
  EXPECT_FALSE(InNetworks({}, "127.0.0.1"));
  auto odd = ParseNetworks({"192.168.1.0/23"});
  ASSERT_TRUE(odd.ok());
  EXPECT_TRUE(InNetworks(*odd, "192.168.0.7"));
  EXPECT_FALSE(InNetworks(*odd, "192.168.2.7"));
  EXPECT_FALSE(ParseNetworks({"10.0.0.0/33"}).ok());
  EXPECT_FALSE(ParseNetworks({"nonsense"}).ok());
  EXPECT_EQ(MailboxDomain("a@Example.TEST"), "example.test");
  EXPECT_EQ(MailboxDomain("postmaster"), "");
}

// --- BDAT, SMTPUTF8, DSN ---

const char kTx[] =
    "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n";
const char kTxOk[] = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n";

std::string WithoutEhlo(const std::string& out) {
  const std::string last = "250 ENHANCEDSTATUSCODES\r\n";
  const size_t at = out.find(last);
  return at == std::string::npos ? out : out.substr(at + last.size());
}

class SessionBdat : public ::testing::TestWithParam<bool> {};

TEST_P(SessionBdat, Transcripts) {
  // The content is taken as is: no dot-unstuffing, and ".\r\n" ends nothing.
  const std::string part1 = "Subject: chunks\r\n\r\n.leading dot\r\n";
  const std::string part2 = ".\r\nlast line\r\n";
  SessionLimits small;
  small.max_message_size = 10;
  struct Case {
    const char* name;
    std::string input;
    std::string output;
    std::string data;
    SessionLimits limits = {};
  };
  const std::vector<Case> cases = {
      {"two chunks",
       std::string(kTx) + "BDAT " + std::to_string(part1.size()) + "\r\n" +
           part1 + "BDAT " + std::to_string(part2.size()) + " LAST\r\n" +
           part2 + "QUIT\r\n",
       std::string(kTxOk) + "250 2.0.0 Ok: " + std::to_string(part1.size()) +
           " octets received\r\n250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 "
           "Bye\r\n",
       part1 + part2},
      {"empty last chunk", std::string(kTx) + "BDAT 4\r\nab\r\nBDAT 0 LAST\r\n",
       std::string(kTxOk) +
           "250 2.0.0 Ok: 4 octets received\r\n250 2.0.0 Ok: queued as Q1\r\n",
       "ab\r\n"},
      {"octets of a refused chunk are read, not run",
       "HELO c\r\nBDAT 6\r\nNOOP\r\nNOOP\r\n",
       "250 mx.example.test\r\n503 5.5.1 Error: need MAIL command\r\n250 "
       "2.0.0 Ok\r\n",
       ""},
      {"no recipients", "HELO c\r\nMAIL FROM:<>\r\nBDAT 1 LAST\r\nx",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n554 5.5.1 Error: no valid "
       "recipients\r\n",
       ""},
      {"bad syntax", "HELO c\r\nBDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\n",
       "250 mx.example.test\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n501 "
       "5.5.4 Syntax: BDAT size [LAST]\r\n501 5.5.4 Syntax: BDAT size "
       "[LAST]\r\n",
       ""},
      {"DATA after BDAT", std::string(kTx) + "BDAT 2\r\nabDATA\r\n",
       std::string(kTxOk) +
           "250 2.0.0 Ok: 2 octets received\r\n503 5.5.1 Error: DATA after "
           "BDAT\r\n",
       ""},
      {"bare LF refuses the chunk and ends the transaction",
       std::string(kTx) + "BDAT 3\r\na\nbBDAT 2 LAST\r\n\r\n",
       std::string(kTxOk) +
           "550 5.6.0 Error: bare CR or LF in message; lines must end with "
           "CRLF\r\n503 5.5.1 Error: need MAIL command\r\n",
       ""},
      {"bare CR at the very end", std::string(kTx) + "BDAT 2 LAST\r\na\r",
       std::string(kTxOk) +
           "550 5.6.0 Error: bare CR or LF in message; lines must end with "
           "CRLF\r\n",
       ""},
      {"CRLF split across chunks is fine",
       std::string(kTx) + "BDAT 2\r\na\rBDAT 1 LAST\r\n\n",
       std::string(kTxOk) +
           "250 2.0.0 Ok: 2 octets received\r\n250 2.0.0 Ok: queued as Q1\r\n",
       "a\r\n"},
      {"too big", std::string(kTx) + "BDAT 12 LAST\r\n0123456789\r\n",
       std::string(kTxOk) + "552 5.3.4 Error: message size exceeds limit\r\n",
       "", small},
  };
  for (const auto& c : cases) {
    FakeWorld w;
    std::string out =
        WithoutEhlo(Play({"", c.input, ""}, GetParam(), w, c.limits));
    EXPECT_EQ(out, c.output) << c.name;
    EXPECT_EQ(w.data, c.data) << c.name;
  }
}

TEST_P(SessionBdat, EventsCarryChunkSizes) {
  FakeWorld w;
  Play({"", std::string(kTx) + "BDAT 3\r\nab\nBDAT 2\r\nabBDAT 2 LAST\r\n\r\n",
        ""},
       GetParam(), w);
  FakeWorld w2;
  Play({"", std::string(kTx) + "BDAT 2\r\nabBDAT 2 LAST\r\n\r\n", ""},
       GetParam(), w2);
  std::vector<std::pair<uint64_t, bool>> chunks;
  for (const auto& e : w2.events) {
    if (e.type() == v1::EVENT_TYPE_BDAT) {
      chunks.emplace_back(e.chunk_size(), e.last_chunk());
    }
  }
  EXPECT_EQ(chunks,
            (std::vector<std::pair<uint64_t, bool>>{{2, false}, {2, true}}));
  EXPECT_EQ(w2.events.back().type(), v1::EVENT_TYPE_EOD);
  EXPECT_EQ(w2.events.back().message_size(), 4u);
  EXPECT_EQ(w2.data, "ab\r\n");
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, SessionBdat, ::testing::Bool());

class SessionParams : public ::testing::TestWithParam<bool> {};

TEST_P(SessionParams, Smtputf8AndDsn) {
  const std::string utf8_from =
      "j\xc3\xb6rg@b\xc3\xbc"
      "cher.example";
  const std::string utf8_to = "\xe7\x94\xa8\xe6\x88\xb7@example.test";
  struct Case {
    const char* name;
    std::string input;
    std::string output;
  };
  const std::vector<Case> cases = {
      {"utf-8 addresses with SMTPUTF8",
       "HELO c\r\nMAIL FROM:<" + utf8_from +
           "> SMTPUTF8 BODY=8BITMIME\r\n"
           "RCPT TO:<" +
           utf8_to + ">\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"},
      {"utf-8 sender without SMTPUTF8",
       "HELO c\r\nMAIL FROM:<" + utf8_from + ">\r\n",
       "250 mx.example.test\r\n553 5.6.7 Error: non-ASCII address requires "
       "SMTPUTF8\r\n"},
      {"utf-8 recipient without SMTPUTF8",
       "HELO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<" + utf8_to + ">\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n553 5.6.7 Error: non-ASCII "
       "address requires SMTPUTF8\r\n"},
      {"broken utf-8", "HELO c\r\nMAIL FROM:<a\xc3@b.example> SMTPUTF8\r\n",
       "250 mx.example.test\r\n501 5.1.7 Bad sender address syntax\r\n"},
      {"SMTPUTF8 with a value",
       "HELO c\r\nMAIL FROM:<a@b.example> SMTPUTF8=1\r\n",
       "250 mx.example.test\r\n501 5.5.4 SMTPUTF8 takes no value\r\n"},
      {"dsn parameters",
       "HELO c\r\nMAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B314159\r\n"
       "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE "
       "ORCPT=rfc822;c+40d.example\r\nRCPT TO:<e@d.example> NOTIFY=NEVER\r\n",
       "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 "
       "Ok\r\n"},
      {"bad dsn parameters",
       "HELO c\r\nMAIL FROM:<a@b.example> RET=ALL\r\n"
       "MAIL FROM:<a@b.example> ENVID=a=b\r\n"
       "MAIL FROM:<a@b.example> RET=FULL RET=HDRS\r\n"
       "MAIL FROM:<a@b.example>\r\n"
       "RCPT TO:<c@d.example> NOTIFY=NEVER,DELAY\r\n"
       "RCPT TO:<c@d.example> NOTIFY=SOMETIMES\r\n"
       "RCPT TO:<c@d.example> ORCPT=c@d.example\r\n"
       "RCPT TO:<c@d.example> ORCPT=rfc822;c+4\r\n",
       "250 mx.example.test\r\n501 5.5.4 Bad RET parameter\r\n501 5.5.4 Bad "
       "ENVID parameter\r\n501 5.5.4 Duplicate parameter RET\r\n250 2.1.0 "
       "Ok\r\n501 5.5.4 Bad NOTIFY parameter\r\n501 5.5.4 Bad NOTIFY "
       "parameter\r\n501 5.5.4 Bad ORCPT parameter\r\n501 5.5.4 Bad ORCPT "
       "parameter\r\n"},
  };
  for (const auto& c : cases) {
    FakeWorld w;
    EXPECT_EQ(Play({"", c.input, ""}, GetParam(), w), c.output) << c.name;
  }
}

TEST_P(SessionParams, DsnParametersAreKeptInTheEnvelope) {
  FakeWorld w;
  Play({"",
        "HELO c\r\nMAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159 "
        "SMTPUTF8\r\nRCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE "
        "ORCPT=rfc822;c@d.example\r\nDATA\r\nx\r\n.\r\n",
        ""},
       GetParam(), w);
  const v1::Event& eod = w.events.back();
  ASSERT_EQ(eod.type(), v1::EVENT_TYPE_EOD);
  std::vector<std::pair<std::string, std::string>> mail, rcpt;
  for (const auto& p : eod.envelope().mail_params()) {
    mail.emplace_back(p.key(), p.value());
  }
  ASSERT_EQ(eod.envelope().recipients_size(), 1);
  for (const auto& p : eod.envelope().recipients(0).params()) {
    rcpt.emplace_back(p.key(), p.value());
  }
  using Params = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(mail,
            (Params{{"RET", "HDRS"}, {"ENVID", "QQ314159"}, {"SMTPUTF8", ""}}));
  EXPECT_EQ(rcpt, (Params{{"NOTIFY", "SUCCESS,FAILURE"},
                          {"ORCPT", "rfc822;c@d.example"}}));
  // The RCPT event shows the recipient at hand with its parameters.
  for (const auto& e : w.events) {
    if (e.type() == v1::EVENT_TYPE_RCPT) {
      EXPECT_EQ(e.recipient().params_size(), 2);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, SessionParams, ::testing::Bool());

TEST(Parser, Utf8XtextBdat) {
  EXPECT_TRUE(ValidUtf8("plain"));
  EXPECT_TRUE(ValidUtf8("\xc3\xb6\xe7\x94\xa8\xf0\x9f\x93\xa7"));
  EXPECT_FALSE(ValidUtf8("\xc3"));              // truncated
  EXPECT_FALSE(ValidUtf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(ValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(ValidUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(ValidUtf8("\xff"));
  EXPECT_TRUE(ValidXtext("abc+2Bdef"));
  EXPECT_FALSE(ValidXtext("a+2"));
  EXPECT_FALSE(ValidXtext("a+2b"));
  EXPECT_FALSE(ValidXtext("a=b"));
  EXPECT_FALSE(ValidXtext("a b"));
  EXPECT_TRUE(ValidOrcpt("rfc822;a@b.c", false));
  EXPECT_TRUE(ValidOrcpt("utf-8;\xc3\xb6@b.c", true));
  EXPECT_FALSE(ValidOrcpt("utf-8;\xc3\xb6@b.c", false));
  auto b = ParseBdatArgument("1024 last");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->size, 1024u);
  EXPECT_TRUE(b->last);
  EXPECT_FALSE(ParseBdatArgument("-1").ok());
  EXPECT_FALSE(ParseBdatArgument("99999999999999999999").ok());
  EXPECT_FALSE(ParseBdatArgument("1 LAST x").ok());
}

// --- Limits, early talkers, draining ---

TEST_P(SessionParams, TooManyErrorsCloses) {
  SessionLimits limits;
  limits.max_errors = 3;
  FakeWorld w;
  EXPECT_EQ(
      Play({"", "XYZZY\r\nNOOP\r\nMAIL FROM:<a@b.c>\r\nFOO\r\nNOOP\r\n", ""},
           GetParam(), w, limits),
      "500 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n503 "
      "5.5.1 Error: send HELO/EHLO first\r\n500 5.5.2 Error: command "
      "not recognized\r\n421 4.7.0 mx.example.test Error: too many "
      "errors\r\n");
  EXPECT_TRUE(w.closed);
  // 4xx replies do not count.
  limits.max_recipients = 1;
  FakeWorld w2;
  const std::string out =
      Play({"",
            "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nRCPT "
            "TO:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nNOOP\r\n",
            ""},
           GetParam(), w2, limits);
  EXPECT_FALSE(w2.closed);
  EXPECT_EQ(out.substr(out.size() - 14), "250 2.0.0 Ok\r\n");
}

TEST(Session, EarlyTalkerGets554) {
  FakeWorld w;
  Session s({}, Trusted(), TestInfo(), &w);
  s.SetBindingMap({});
  s.Feed("EHLO early.example\r\n");
  s.Start();
  EXPECT_EQ(w.written,
            "554 5.5.1 mx.example.test Error: input before the greeting\r\n");
  EXPECT_TRUE(w.closed);
  for (const auto& e : w.events) EXPECT_NE(e.type(), v1::EVENT_TYPE_EHLO);
}

TEST(Session, DrainingIdleSessionGets421AtOnce) {
  FakeWorld w;
  Session s({}, Trusted(), TestInfo(), &w);
  s.SetBindingMap({});
  s.Start();
  s.Feed("EHLO c\r\n");
  w.written.clear();
  s.SetDraining();
  EXPECT_EQ(w.written,
            "421 4.3.2 mx.example.test Service shutting down, closing "
            "transmission channel\r\n");
  EXPECT_TRUE(w.closed);
}

TEST(Session, DrainingLetsTheTransactionFinish) {
  for (bool bytewise : {false, true}) {
    FakeWorld w;
    Session s({}, Trusted(), TestInfo(), &w);
    s.SetBindingMap({});
    s.Start();
    s.Feed("EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nhal");
    w.written.clear();
    s.SetDraining();
    EXPECT_FALSE(w.closed);
    const std::string rest = "f\r\n.\r\n";
    if (bytewise) {
      for (char c : rest) {
        s.Feed(absl::string_view(&c, 1));
        w.AnswerAll(s);
      }
    } else {
      s.Feed(rest);
      w.AnswerAll(s);
    }
    EXPECT_EQ(w.written,
              "250 2.0.0 Ok: queued as Q1\r\n421 4.3.2 mx.example.test "
              "Service shutting down, closing transmission channel\r\n");
    EXPECT_EQ(w.data, "half\r\n");
    EXPECT_TRUE(w.closed);
  }
}

TEST(Session, DrainingClosesWhenTheTransactionEnds) {
  FakeWorld w;
  Session s({}, Trusted(), TestInfo(), &w);
  s.SetBindingMap({});
  s.Start();
  s.Feed("EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
  s.SetDraining();
  w.written.clear();
  s.Feed("RSET\r\nQUIT\r\n");
  EXPECT_EQ(w.written,
            "250 2.0.0 Ok\r\n421 4.3.2 mx.example.test Service shutting down, "
            "closing transmission channel\r\n");
}

// --bare-lf: reject (the default) and normalize, whole and byte by byte.
// In both modes only <CRLF>.<CRLF> ends DATA.
class SessionBareLf : public ::testing::TestWithParam<bool> {};

SessionLimits Normalizing() {
  SessionLimits l;
  l.normalize_bare_lf = true;
  return l;
}

const char kDataTx[] =
    "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\n";
const char kDataTxReplies[] =
    "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data "
    "with <CR><LF>.<CR><LF>\r\n";

TEST_P(SessionBareLf, RejectRefusesCommandsAndMessages) {
  FakeWorld w;
  EXPECT_EQ(Play({"lf", "NOOP\nHELO c\n", ""}, GetParam(), w),
            "500 5.5.2 Error: bare LF in command; lines must end with "
            "CRLF\r\n500 5.5.2 Error: bare LF in command; lines must end "
            "with CRLF\r\n");
  FakeWorld w2;
  EXPECT_EQ(Play({"data", std::string(kDataTx) + "a\nb\r\n.\r\n", ""},
                 GetParam(), w2),
            std::string(kDataTxReplies) +
                "550 5.6.0 Error: bare CR or LF in message; lines must end "
                "with CRLF\r\n");
  EXPECT_EQ(w2.data, "");
}

TEST_P(SessionBareLf, NormalizeTakesLfCommandsAndMakesCrlf) {
  FakeWorld w;
  const std::string out =
      Play({"lf",
            "HELO c\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\nDATA\n"
            "Subject: s\n\nline\r\n.dot\nend\n\r\n.\r\nNOOP\n",
            ""},
           GetParam(), w, Normalizing());
  EXPECT_EQ(out, std::string(kDataTxReplies) +
                     "250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 Ok\r\n");
  EXPECT_EQ(w.data, "Subject: s\r\n\r\nline\r\ndot\r\nend\r\n\r\n");
  EXPECT_EQ(w.events.back().type(), v1::EVENT_TYPE_NOOP);
}

TEST_P(SessionBareLf, NormalizeStillRefusesBareCr) {
  FakeWorld w;
  EXPECT_EQ(Play({"cr", "NO\rOP\n", ""}, GetParam(), w, Normalizing()),
            "500 5.5.2 Error: bare CR in command; lines must end with "
            "CRLF\r\n");
  FakeWorld w2;
  EXPECT_EQ(Play({"data", std::string(kDataTx) + "a\rb\r\n.\r\n", ""},
                 GetParam(), w2, Normalizing()),
            std::string(kDataTxReplies) +
                "550 5.6.0 Error: bare CR or LF in message; lines must end "
                "with CRLF\r\n");
}

TEST_P(SessionBareLf, NormalizeNeverEndsDataAtBareLfDot) {
  for (const char* trick : {"\n.\n", "\n.\r\n", "\r\n.\n"}) {
    FakeWorld w;
    const std::string out = Play(
        {"smuggle",
         std::string(kDataTx) + "head" + trick +
             "MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@w.x>\r\nDATA\r\nsmuggled\r\n"
             ".\r\n",
         ""},
        GetParam(), w, Normalizing());
    // One message, ended by the real <CRLF>.<CRLF>: the smuggled commands
    // are its content, never commands.
    EXPECT_EQ(out,
              std::string(kDataTxReplies) + "250 2.0.0 Ok: queued as Q1\r\n")
        << trick;
    int mails = 0;
    for (const auto& e : w.events) mails += e.type() == v1::EVENT_TYPE_MAIL;
    EXPECT_EQ(mails, 1) << trick;
    EXPECT_NE(w.data.find("MAIL FROM:<evil@x.y>\r\n"), std::string::npos);
  }
}

INSTANTIATE_TEST_SUITE_P(WholeAndByteAtATime, SessionBareLf, ::testing::Bool());

// --reject-improper-pipelining: input that came with or after DATA before
// its 354 closes the session with 554.
SessionLimits StrictPipelining() {
  SessionLimits l;
  l.reject_improper_pipelining = true;
  return l;
}

TEST(Session, ContentPipelinedAfterDataIsRefused) {
  FakeWorld w;
  const std::string out = Play(
      {"pipelined", std::string(kDataTx) + "Subject: x\r\n\r\nhi\r\n.\r\n", ""},
      /*byte_at_a_time=*/false, w, StrictPipelining());
  EXPECT_EQ(out,
            "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n554 5.5.0 "
            "Error: improper command pipelining after DATA\r\n");
  EXPECT_TRUE(w.closed);
  for (const auto& e : w.events) EXPECT_NE(e.type(), v1::EVENT_TYPE_EOD);
}

TEST(Session, PipeliningUpToDataIsFine) {
  // MAIL, RCPT and DATA in one group (RFC 2920), the content after 354:
  // fed one octet at a time, nothing waits in the buffer when 354 goes out.
  for (bool bound : {false, true}) {
    FakeWorld w;
    Transcript t{"group",
                 std::string(kDataTx) + "Subject: x\r\n\r\nhi\r\n.\r\n", ""};
    if (bound) t.bound = {v1::EVENT_TYPE_DATA};
    EXPECT_EQ(Play(t, /*byte_at_a_time=*/true, w, StrictPipelining()),
              std::string(kDataTxReplies) + "250 2.0.0 Ok: queued as Q1\r\n");
    EXPECT_FALSE(w.closed);
  }
  // A DATA that is refused is not a group's end: what follows are commands.
  FakeWorld w;
  EXPECT_EQ(
      Play({"refused", "HELO c\r\nMAIL FROM:<a@b.c>\r\nDATA\r\nNOOP\r\n", ""},
           false, w, StrictPipelining()),
      "250 mx.example.test\r\n250 2.1.0 Ok\r\n554 5.5.1 Error: no valid "
      "recipients\r\n250 2.0.0 Ok\r\n");
}

TEST(Session, PipelinedDataWaitingForTheBrokerIsRefused) {
  // DATA is bound: the content came with it while the edge waited.
  FakeWorld w;
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s(StrictPipelining(), Trusted(), info, &w);
  v1::BindingMap map;
  map.add_events(v1::EVENT_TYPE_DATA);
  s.SetBindingMap(map);
  s.Start();
  s.Feed(std::string(kDataTx) + "body\r\n.\r\n");
  w.written.clear();
  w.AnswerAll(s);
  EXPECT_EQ(w.written,
            "554 5.5.0 Error: improper command pipelining after DATA\r\n");
  EXPECT_TRUE(s.closed());
}

}  // namespace
}  // namespace sinkline::edge
