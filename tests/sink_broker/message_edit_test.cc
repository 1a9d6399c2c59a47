#include "sink_broker/message_edit.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace sinkline::broker {
namespace {

v1::ContentEdit Add(const std::string& n, const std::string& v, int index = 0,
                    bool append = false) {
  v1::ContentEdit e;
  e.mutable_add_header()->set_name(n);
  e.mutable_add_header()->set_value(v);
  if (append) {
    e.mutable_add_header()->mutable_position()->set_append(true);
  } else {
    e.mutable_add_header()->mutable_position()->set_index(index);
  }
  return e;
}

std::string Rewrite(const std::string& in,
                    const std::vector<v1::ContentEdit>& edits) {
  // Names of their own per test and process: ctest may run the tests of
  // this binary side by side.
  const auto dir = std::filesystem::temp_directory_path();
  const std::string name =
      std::string(
          ::testing::UnitTest::GetInstance()->current_test_info()->name()) +
      "-" + std::to_string(::getpid());
  const std::string a = (dir / ("sinkline-edit-in-" + name)).string();
  const std::string b = (dir / ("sinkline-edit-out-" + name)).string();
  std::ofstream(a, std::ios::binary) << in;
  auto size = RewriteMessage(a, b, edits);
  EXPECT_TRUE(size.ok()) << size.status();
  std::ifstream f(b, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(*size, ss.str().size());
  std::remove(a.c_str());
  std::remove(b.c_str());
  return ss.str();
}

constexpr char kMsg[] =
    "Received: from a\r\n by b\r\nSubject: one\r\nX-Old: 1\r\nsubject: "
    "two\r\n\r\nbody line\r\n.\r\n";

TEST(ParseHeader, FoldedFieldsAndBodyOffset) {
  auto h = ParseHeader(kMsg);
  ASSERT_EQ(h.fields.size(), 4u);
  EXPECT_EQ(h.fields[0].raw, "Received: from a\r\n by b\r\n");
  EXPECT_EQ(h.fields[3].name, "subject");
  EXPECT_TRUE(h.has_separator);
  EXPECT_EQ(std::string(kMsg).substr(h.body_offset), "body line\r\n.\r\n");
}

TEST(RewriteMessage, AddAtTopIndexAndAppend) {
  EXPECT_EQ(Rewrite(kMsg, {Add("X-Top", "t"), Add("X-Third", "3", 2),
                           Add("X-End", "e", 0, true)}),
            "X-Top: t\r\nReceived: from a\r\n by b\r\nX-Third: 3\r\nSubject: "
            "one\r\nX-Old: 1\r\nsubject: two\r\nX-End: e\r\n\r\nbody "
            "line\r\n.\r\n");
}

TEST(RewriteMessage, ChangeAndDeleteByOccurrence) {
  v1::ContentEdit change;
  change.mutable_change_header()->set_name("SUBJECT");
  change.mutable_change_header()->set_occurrence(2);
  change.mutable_change_header()->set_value("changed");
  v1::ContentEdit del;
  del.mutable_delete_header()->set_name("x-old");
  del.mutable_delete_header()->set_occurrence(1);
  EXPECT_EQ(Rewrite(kMsg, {change, del}),
            "Received: from a\r\n by b\r\nSubject: one\r\nsubject: "
            "changed\r\n\r\nbody line\r\n.\r\n");
}

// Found by verdict_fuzz: a message that ends inside its last field (BDAT
// content without a final CRLF), and one without a header whose body starts
// with white space.
TEST(RewriteMessage, AddedFieldsStayFieldsAndTheBodyStaysBody) {
  EXPECT_EQ(Rewrite("Subject: x", {Add("X-A", "1", 0, true)}),
            "Subject: x\r\nX-A: 1\r\n");
  EXPECT_EQ(Rewrite(" indented body line\r\n", {Add("X-A", "1")}),
            "X-A: 1\r\n\r\n indented body line\r\n");
  // A body that starts otherwise keeps its place without an empty line.
  EXPECT_EQ(Rewrite("body line\r\n", {Add("X-A", "1")}),
            "X-A: 1\r\nbody line\r\n");
}

TEST(RewriteMessage, ReplaceBody) {
  v1::ContentEdit body;
  body.mutable_replace_body()->set_body("new\r\n");
  EXPECT_EQ(Rewrite("A: b\r\n\r\nold\r\n", {body}), "A: b\r\n\r\nnew\r\n");
}

TEST(RewriteMessage, LargeBodyIsCopiedExactly) {
  std::string body;
  for (int i = 0; i < 50000; ++i) body += "line " + std::to_string(i) + "\r\n";
  const std::string msg = "Subject: big\r\n\r\n" + body;
  EXPECT_EQ(Rewrite(msg, {Add("X-A", "1")}), "X-A: 1\r\n" + msg);
}

TEST(ValidateEdit, RefusesBadNamesAndBareNewlines) {
  EXPECT_FALSE(ValidateEdit(Add("Bad Name", "v")).ok());
  EXPECT_FALSE(ValidateEdit(Add("X:Y", "v")).ok());
  EXPECT_FALSE(ValidateEdit(Add("X", "a\nb")).ok());
  EXPECT_FALSE(ValidateEdit(Add("X", "a\r\nb")).ok());
  EXPECT_TRUE(ValidateEdit(Add("X", "a\r\n b")).ok());
}

}  // namespace
}  // namespace sinkline::broker
