#include "sink_broker/dsn.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "sink_broker/delivery_state.h"

namespace sinkline::broker {
namespace {

v1::QueueEntry Original(const std::string& from = "sender@example.test") {
  v1::QueueEntry e;
  e.set_queue_id("Q1");
  e.mutable_envelope()->set_mail_from(from);
  auto* p = e.mutable_envelope()->add_mail_params();
  p->set_key("ENVID");
  p->set_value("env+2B42");
  return e;
}

RecipientRecord Failed(const std::string& addr, const std::string& reply,
                       const std::string& notify = "") {
  RecipientRecord r;
  r.recipient.set_address(addr);
  if (!notify.empty()) {
    auto* p = r.recipient.add_params();
    p->set_key("NOTIFY");
    p->set_value(notify);
  }
  r.result = RecipientResult::kFailed;
  r.reply = reply;
  return r;
}

TEST(DeliveryState, FormatAndParseRoundTrip) {
  std::vector<RecipientRecord> in = {
      Failed("a@example.test", "550 5.1.1 no\tsuch\nuser", "FAILURE"),
      {{}, RecipientResult::kDelivered, ""},
      {{}, RecipientResult::kDeferred, "451 4.2.0 later"}};
  in[1].recipient.set_address("b@example.test");
  in[2].recipient.set_address("c@example.test");
  auto out = ParseDeliveryState(FormatDeliveryState(in));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 3u);
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].recipient.address(), in[i].recipient.address());
    EXPECT_EQ((*out)[i].result, in[i].result);
    EXPECT_EQ((*out)[i].reply, in[i].reply);
  }
  ASSERT_EQ((*out)[0].recipient.params_size(), 1);
  EXPECT_EQ((*out)[0].recipient.params(0).value(), "FAILURE");
  EXPECT_FALSE(ParseDeliveryState("bogus\tline\n").ok());
}

TEST(Dsn, NoneForTheNullSenderOrNotifyWithoutFailure) {
  const std::vector<RecipientRecord> failed = {
      Failed("a@example.test", "550 5.1.1 no")};
  EXPECT_TRUE(DsnRecipients(Original(""), failed).empty());
  EXPECT_EQ(DsnRecipients(Original(), failed).size(), 1u);
  EXPECT_TRUE(
      DsnRecipients(Original(), {Failed("a@example.test", "550", "NEVER")})
          .empty());
  EXPECT_TRUE(DsnRecipients(Original(),
                            {Failed("a@example.test", "550", "SUCCESS,DELAY")})
                  .empty());
  EXPECT_EQ(DsnRecipients(Original(),
                          {Failed("a@example.test", "550", "SUCCESS,FAILURE")})
                .size(),
            1u);
}

TEST(Dsn, ReportQuotesTheReplyPerRecipient) {
  const std::string dsn = BuildDsn(
      Original(),
      {Failed("a@example.test", "550 5.1.1 <a@example.test>: no such user"),
       Failed("b@example.test",
              "delivery time expired after 60 s in the queue: 451 4.2.0 "
              "busy"),
       Failed("c@example.test",
              "next hop x (h[1.2.3.4]:25): 5.6.3 the next hop does not offer "
              "8BITMIME")},
      "Subject: hi\r\nMessage-ID: <m@x>\r\n", "mx.example.test", "D1",
      absl::FromUnixSeconds(1800000000));
  for (const char* want : {
           "Content-Type: multipart/report; report-type=delivery-status;",
           "Content-Type: message/delivery-status\r\n",
           "Reporting-MTA: dns; mx.example.test\r\n",
           "Original-Envelope-Id: env+42\r\n",
           "Final-Recipient: rfc822; a@example.test\r\nAction: failed\r\n"
           "Status: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 <a@example.test>: no such user",
           "Final-Recipient: rfc822; b@example.test\r\nAction: failed\r\n"
           "Status: 4.4.7\r\nDiagnostic-Code: smtp; 451 4.2.0 busy\r\n",
           "Status: 5.6.3\r\nDiagnostic-Code: x-sinkline; next hop x",
           "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n",
           "To: <sender@example.test>\r\n",
       }) {
    EXPECT_TRUE(absl::StrContains(dsn, want)) << want << "\n---\n" << dsn;
  }
  // CRLF only.
  for (size_t i = 0; i < dsn.size(); ++i) {
    if (dsn[i] == '\n') {
      ASSERT_TRUE(i > 0 && dsn[i - 1] == '\r') << i;
    }
  }
}

// A content file for ContentToReturn, removed at the end of the test.
class ContentFile {
 public:
  explicit ContentFile(const std::string& bytes) {
    char tmpl[] = "/tmp/dsn_test_XXXXXX";
    const int fd = ::mkstemp(tmpl);
    path_ = tmpl;
    ::close(fd);
    std::ofstream(path_, std::ios::binary) << bytes;
  }
  ~ContentFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

v1::QueueEntry WithParam(v1::QueueEntry e, const std::string& key,
                         const std::string& value) {
  auto* p = e.mutable_envelope()->add_mail_params();
  p->set_key(key);
  p->set_value(value);
  return e;
}

constexpr char kDsnOriginal[] =
    "Subject: hi\r\nMessage-ID: <m@x>\r\n\r\nthe body\r\n.dot line\r\n";

TEST(Dsn, HeadersOnlyWithoutRetOrWithRetHdrs) {
  ContentFile f(kDsnOriginal);
  for (const auto& e : {Original(), WithParam(Original(), "RET", "HDRS")}) {
    const ReturnedContent r = ContentToReturn(e, f.path(), {});
    EXPECT_FALSE(r.full);
    EXPECT_EQ(r.bytes, "Subject: hi\r\nMessage-ID: <m@x>\r\n");
    EXPECT_TRUE(r.note.empty());
  }
}

TEST(Dsn, RetFullReturnsTheWholeMessageAsMessageRfc822) {
  ContentFile f(kDsnOriginal);
  const auto e = WithParam(Original(), "RET", "FULL");
  const ReturnedContent r = ContentToReturn(
      e, f.path(), {.max_return_bytes = sizeof kDsnOriginal - 1});
  ASSERT_TRUE(r.full);
  EXPECT_EQ(r.bytes, kDsnOriginal);
  const std::string dsn =
      BuildDsn(e, {Failed("a@example.test", "550 5.1.1 no")}, r,
               "mx.example.test", "D1", absl::FromUnixSeconds(1800000000));
  EXPECT_TRUE(absl::StrContains(
      dsn, absl::StrCat("Content-Type: message/rfc822\r\n\r\n", kDsnOriginal,
                        "\r\n--=_dsn_D1_")))
      << dsn;
  EXPECT_FALSE(absl::StrContains(dsn, "text/rfc822-headers"));
  EXPECT_FALSE(absl::StrContains(dsn, "Content-Transfer-Encoding"));
}

TEST(Dsn, RetFullLargerThanTheLimitFallsBackToTheHeaderWithANote) {
  ContentFile f(kDsnOriginal);
  const auto e = WithParam(Original(), "RET", "full");
  const ReturnedContent r = ContentToReturn(
      e, f.path(), {.max_return_bytes = sizeof kDsnOriginal - 2});
  EXPECT_FALSE(r.full);
  EXPECT_EQ(r.bytes, "Subject: hi\r\nMessage-ID: <m@x>\r\n");
  EXPECT_TRUE(absl::StrContains(r.note, "only its header is returned"))
      << r.note;
  const std::string dsn =
      BuildDsn(e, {Failed("a@example.test", "550 5.1.1 no")}, r,
               "mx.example.test", "D1", absl::FromUnixSeconds(1800000000));
  EXPECT_TRUE(absl::StrContains(dsn, r.note)) << dsn;
  EXPECT_TRUE(absl::StrContains(dsn, "text/rfc822-headers"));
  // Binary content is never returned whole.
  const ReturnedContent b =
      ContentToReturn(WithParam(e, "BODY", "BINARYMIME"), f.path(), {});
  EXPECT_FALSE(b.full);
  EXPECT_TRUE(absl::StrContains(b.note, "BINARYMIME")) << b.note;
}

TEST(Dsn, EightBitContentIsMarked8Bit) {
  ContentFile f("Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n");
  const auto e = WithParam(Original(), "RET", "FULL");
  const ReturnedContent r = ContentToReturn(e, f.path(), {});
  ASSERT_TRUE(r.full);
  const std::string dsn =
      BuildDsn(e, {Failed("a@example.test", "550 5.1.1 no")}, r,
               "mx.example.test", "D1", absl::FromUnixSeconds(1800000000));
  EXPECT_TRUE(absl::StrContains(
      dsn, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit"))
      << dsn;
}

}  // namespace
}  // namespace sinkline::broker
