// The mailbox grammar (RFC 5321 §4.1.2): Dot-string and Quoted-string local
// parts, and the sender-specified routing the edge refuses from untrusted
// clients.
#include "sinkline/common/address.h"

#include <gtest/gtest.h>

#include <string>

namespace sinkline {
namespace {

TEST(ValidMailbox, PlainAddresses) {
  EXPECT_TRUE(ValidMailbox("bob@example.test", false));
  EXPECT_TRUE(ValidMailbox("a.b+tag@example.test", false));
  EXPECT_FALSE(ValidMailbox("", false));
  EXPECT_FALSE(ValidMailbox("bob", false));
  EXPECT_FALSE(ValidMailbox("@example.test", false));
  EXPECT_FALSE(ValidMailbox("bob@", false));
  EXPECT_FALSE(ValidMailbox("bob smith@example.test", false));
  EXPECT_FALSE(ValidMailbox("bob\\x@example.test", false));
  EXPECT_FALSE(ValidMailbox(std::string(250, 'a') + "@b.cd", false));
}

TEST(ValidMailbox, QuotedLocalParts) {
  EXPECT_TRUE(ValidMailbox("\"quoted local\"@example.test", false));
  EXPECT_TRUE(ValidMailbox("\"\"@example.test", false));
  EXPECT_TRUE(ValidMailbox("\"a\\\"b\"@example.test", false));  // "a\"b"
  EXPECT_TRUE(ValidMailbox("\"a\\\\b\"@example.test", false));  // "a\\b"
  EXPECT_TRUE(ValidMailbox("\"<a>,(b);c\"@example.test", false));
  EXPECT_TRUE(ValidMailbox("\"a@b\"@example.test", false));
  // Quoted-pairs take any printable ASCII or space.
  EXPECT_TRUE(ValidMailbox("\"\\ \\~\"@example.test", false));
  // Not closed, nothing after the quote, a bare backslash, a control.
  EXPECT_FALSE(ValidMailbox("\"open@example.test", false));
  EXPECT_FALSE(ValidMailbox("\"a\"", false));
  EXPECT_FALSE(ValidMailbox("\"a\"@", false));
  EXPECT_FALSE(ValidMailbox("\"a\"b@example.test", false));
  EXPECT_FALSE(ValidMailbox("\"a\\\"@example.test", false));
  EXPECT_FALSE(ValidMailbox("\"a\tb\"@example.test", false));
  EXPECT_FALSE(ValidMailbox("\"a\\\x01\"@example.test", false));
  EXPECT_FALSE(ValidMailbox(std::string("\"a\0b\"@example.test", 14), false));
  // The domain keeps its rules.
  EXPECT_FALSE(ValidMailbox("\"a\"@exa mple.test", false));
  EXPECT_FALSE(ValidMailbox("\"a\"@b@example.test", false));
  // UTF-8 in the quotes only with SMTPUTF8 (RFC 6531 qtextSMTP).
  EXPECT_FALSE(ValidMailbox("\"j\xc3\xb6rg\"@example.test", false));
  EXPECT_TRUE(ValidMailbox("\"j\xc3\xb6rg\"@example.test", true));
  EXPECT_FALSE(ValidMailbox("\"j\xc3\"@example.test", true));
}

TEST(ValidateEnvelopeAddress, QuotedLocalPart) {
  EXPECT_TRUE(
      ValidateEnvelopeAddress("\"quoted local\"@example.test", false, false)
          .ok());
  EXPECT_FALSE(
      ValidateEnvelopeAddress("\"open local@example.test", false, false).ok());
}

TEST(MailboxLocalPart, SplitsAfterTheQuotes) {
  EXPECT_EQ(MailboxLocalPart("bob@example.test"), "bob");
  EXPECT_EQ(MailboxLocalPart("\"a@b\"@example.test"), "\"a@b\"");
  EXPECT_EQ(MailboxLocalPart("postmaster"), "postmaster");
}

TEST(UnquoteLocalPart, RemovesQuotesAndPairs) {
  EXPECT_EQ(UnquoteLocalPart("bob"), "bob");
  EXPECT_EQ(UnquoteLocalPart("\"quoted local\""), "quoted local");
  EXPECT_EQ(UnquoteLocalPart("\"a\\\"b\\\\c\""), "a\"b\\c");
  EXPECT_EQ(UnquoteLocalPart("\"\""), "");
}

TEST(ToValidUtf8, ReplacesWhatIsNotUtf8) {
  EXPECT_EQ(ToValidUtf8("plain j\xc3\xb6rg"), "plain j\xc3\xb6rg");
  EXPECT_EQ(ToValidUtf8("a\xea"
                        "b\xc3"),
            "a\xef\xbf\xbd"
            "b\xef\xbf\xbd");
  EXPECT_TRUE(ValidUtf8(ToValidUtf8("\xf5\xac\x8a\xed\xa0\x80x")));
}

TEST(HasSourceRouting, PercentBangAndQuotedAt) {
  EXPECT_TRUE(HasSourceRouting("user%other@example.test"));
  EXPECT_TRUE(HasSourceRouting("host!user@example.test"));
  EXPECT_TRUE(HasSourceRouting("\"a@b\"@example.test"));
  EXPECT_TRUE(HasSourceRouting("\"a%b\"@example.test"));
  EXPECT_TRUE(HasSourceRouting("\"a!b\"@example.test"));
  EXPECT_TRUE(HasSourceRouting("\"a\\@b\"@example.test"));
  EXPECT_TRUE(HasSourceRouting("a@b@example.test"));
  EXPECT_FALSE(HasSourceRouting("bob@example.test"));
  EXPECT_FALSE(HasSourceRouting("\"quoted local\"@example.test"));
  EXPECT_FALSE(HasSourceRouting("bob@ex%ample.test"));
  EXPECT_FALSE(HasSourceRouting("postmaster"));
}

}  // namespace
}  // namespace sinkline
