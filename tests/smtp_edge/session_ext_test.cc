// The session's BDAT, SMTPUTF8 and DSN parameters, error limits, early
// talkers, draining, bare LF handling and pipelining rules, against a fake
// broker.
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
