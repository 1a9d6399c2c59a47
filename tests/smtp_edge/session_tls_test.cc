// The session's STARTTLS, AUTH and relay control, against a fake broker;
// each case also fed one byte at a time.
#include <crypt.h>
#include <gtest/gtest.h>

#include <deque>
#include <memory>

#include "absl/strings/escaping.h"
#include "smtp_edge/parser.h"
#include "smtp_edge/policy.h"
#include "smtp_edge/session.h"
#include "tests/smtp_edge/session_test_util.h"

namespace sinkline::edge {
namespace {

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

// Sender-specified routing (user%host, host!user, "a@b") in a recipient:
// refused from clients neither trusted nor authenticated unless
// allow_untrusted_routing; a quoted local part without it is accepted and
// reaches the broker byte for byte.
TEST_P(SessionTls, SourceRouting) {
  struct Case {
    const char* name;
    SessionPolicy policy;
    std::string rcpt;
    std::string reply;
  };
  SessionPolicy trusted = TlsPolicy();
  trusted.trusted_client = true;
  SessionPolicy allowed = TlsPolicy();
  allowed.allow_untrusted_routing = true;
  const std::string refused =
      "550 5.7.1 Source routing (%, ! or a quoted @ in the local part) "
      "refused: Relay access denied\r\n";
  const std::string ok = "250 2.1.5 Ok\r\n";
  const std::vector<Case> cases = {
      {"percent hack", TlsPolicy(), "user%other@example.test", refused},
      {"bang path", TlsPolicy(), "host!user@example.test", refused},
      {"quoted @", TlsPolicy(), "\"a@b\"@example.test", refused},
      {"quoted-pair @", TlsPolicy(), "\"a\\@b\"@example.test", refused},
      {"two @", TlsPolicy(), "a@b@example.test", refused},
      {"quoted local part", TlsPolicy(), "\"quoted local\"@example.test", ok},
      {"quoted-pairs", TlsPolicy(), "\"a\\\"b\\\\c\"@example.test", ok},
      {"trusted client", trusted, "user%other@example.test", ok},
      {"flag on", allowed, "host!user@example.test", ok},
  };
  for (const auto& c : cases) {
    FakeWorld w;
    const std::string out = Play(
        {"",
         "HELO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<" + c.rcpt + ">\r\n",
         "",
         {v1::EVENT_TYPE_RCPT}},
        GetParam(), w, {}, c.policy);
    EXPECT_EQ(out, "250 mx.example.test\r\n250 2.1.0 Ok\r\n" + c.reply)
        << c.name;
    int rcpts = 0;
    for (const auto& e : w.events) {
      if (e.type() != v1::EVENT_TYPE_RCPT) continue;
      ++rcpts;
      EXPECT_EQ(e.recipient().address(), c.rcpt) << c.name;
    }
    EXPECT_EQ(rcpts, c.reply == ok ? 1 : 0) << c.name;
  }
  // An authenticated client may route.
  FakeWorld w;
  Session s({}, TlsPolicy(), TestInfo(), &w);
  const std::string out = PlayAfterTls(
      s, w,
      "EHLO c\r\nAUTH PLAIN " + Plain("", "alice", "s3cret pass") +
          "\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user%other@example.test>"
          "\r\n",
      GetParam());
  EXPECT_NE(out.find("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), std::string::npos)
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

}  // namespace
}  // namespace sinkline::edge
