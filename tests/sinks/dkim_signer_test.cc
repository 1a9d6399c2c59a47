#include "sinks/dkim_sign/dkim_signer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sinks/dkim_sign/dkim_sign_sink.h"

namespace sinkline::sinks {
namespace {

TEST(FromDomain, TakesTheAddressDomain) {
  EXPECT_EQ(FromDomain(" alice@Example.TEST"), "example.test");
  EXPECT_EQ(FromDomain(" \"Alice, A.\" <alice@mail.example.test>"),
            "mail.example.test");
  EXPECT_EQ(FromDomain(" Alice <alice@example.test.> (comment)"),
            "example.test");
  EXPECT_EQ(FromDomain(" a@one.test, b@two.test"), "one.test");
  EXPECT_EQ(FromDomain(" undisclosed"), "");
}

class DkimSignerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/dkim-signer-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    ASSERT_EQ(std::system(absl::StrCat("openssl genpkey -algorithm RSA "
                                       "-pkeyopt rsa_keygen_bits:2048 -out ",
                                       *dir_, "/rsa.pem 2>/dev/null")
                              .c_str()),
              0);
    ASSERT_EQ(std::system(absl::StrCat("openssl genpkey -algorithm ed25519 "
                                       "-out ",
                                       *dir_, "/ed.pem 2>/dev/null")
                              .c_str()),
              0);
  }
  static void TearDownTestSuite() {
    std::remove((*dir_ + "/rsa.pem").c_str());
    std::remove((*dir_ + "/ed.pem").c_str());
    rmdir(dir_->c_str());
    delete dir_;
  }
  static std::string* dir_;
};
std::string* DkimSignerTest::dir_ = nullptr;

constexpr char kKeys[] =
    "domains:\n"
    "  Example.Test:\n"
    "    - selector: rsa1\n"
    "      algorithm: rsa-sha256\n"
    "      key: rsa.pem\n"
    "    - selector: ed1\n"
    "      algorithm: ed25519-sha256\n"
    "      key: ed.pem\n"
    "  example.org:\n"
    "    selector: org\n"
    "    algorithm: ed25519-sha256\n"
    "    key: ed.pem\n";

TEST_F(DkimSignerTest, ParsesKeysPerDomain) {
  auto keys = ParseDkimKeys(kKeys, *dir_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  const auto& test = keys->at("example.test");
  ASSERT_EQ(test.size(), 2u);
  EXPECT_EQ(test[0].selector, "rsa1");
  EXPECT_EQ(test[0].algorithm, DkimAlgorithm::kRsaSha256);
  EXPECT_EQ(test[0].key_path, *dir_ + "/rsa.pem");
  EXPECT_TRUE(absl::StrContains(test[0].pem, "PRIVATE KEY"));
  EXPECT_EQ(test[1].algorithm, DkimAlgorithm::kEd25519Sha256);
  EXPECT_EQ(keys->at("example.org").size(), 1u);
}

TEST_F(DkimSignerTest, RefusesBadKeysFiles) {
  // A key of the wrong type for the algorithm.
  auto wrong = ParseDkimKeys(
      "domains:\n  a.test:\n    selector: s\n    algorithm: rsa-sha256\n"
      "    key: ed.pem\n",
      *dir_);
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "RSA key"));
  EXPECT_FALSE(ParseDkimKeys("domains:\n  a.test:\n    selector: s\n"
                             "    algorithm: rsa-sha1\n    key: rsa.pem\n",
                             *dir_)
                   .ok());
  EXPECT_FALSE(ParseDkimKeys("domains:\n  a.test:\n    selector: s\n"
                             "    key: missing.pem\n",
                             *dir_)
                   .ok());
  auto unknown = ParseDkimKeys(
      "domains:\n  a.test:\n    selector: s\n    key: rsa.pem\n    x: 1\n",
      *dir_);
  ASSERT_FALSE(unknown.ok());
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "5:"))
      << unknown.status();
  EXPECT_FALSE(ParseDkimKeys("keys: []\n", *dir_).ok());
}

TEST_F(DkimSignerTest, SignsWithEveryKeyOfTheFromDomain) {
  auto keys = ParseDkimKeys(kKeys, *dir_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  auto signer = DkimSigner::Create(*std::move(keys));
  ASSERT_TRUE(signer.ok()) << signer.status();
  const std::string message =
      "Received: from somewhere\r\n"
      "From: Alice <alice@mail.Example.test>\r\n"
      "To: bob@example.net\r\n"
      "Subject: folded\r\n  subject\r\n"
      "\r\n"
      "body\r\n\r\n\r\n";
  EXPECT_EQ((*signer)->SigningDomain(message), "example.test");
  auto sigs = (*signer)->Sign(message, "T1");
  ASSERT_TRUE(sigs.ok()) << sigs.status();
  ASSERT_EQ(sigs->size(), 2u);
  EXPECT_TRUE(absl::StrContains((*sigs)[0], "a=rsa-sha256")) << (*sigs)[0];
  EXPECT_TRUE(absl::StrContains((*sigs)[1], "a=ed25519-sha256")) << (*sigs)[1];
  for (const std::string& sig : *sigs) {
    EXPECT_TRUE(absl::StrContains(sig, "c=relaxed/relaxed")) << sig;
    EXPECT_TRUE(absl::StrContains(sig, "d=example.test")) << sig;
    // From is signed (and oversigned); the trace header is not.
    EXPECT_TRUE(
        absl::StrContains(absl::AsciiStrToLower(sig), "h=from:to:subject:from"))
        << sig;
    EXPECT_FALSE(absl::StrContains(absl::AsciiStrToLower(sig), "received"));
    // Folded with CRLF + whitespace only.
    for (size_t i = 0; i < sig.size(); ++i) {
      if (sig[i] == '\n') {
        ASSERT_GT(i, 0u);
        EXPECT_EQ(sig[i - 1], '\r');
        ASSERT_LT(i + 1, sig.size());
        EXPECT_TRUE(sig[i + 1] == '\t' || sig[i + 1] == ' ');
      }
      if (sig[i] == '\r') {
        EXPECT_EQ(sig[i + 1], '\n');
      }
    }
  }
}

TEST_F(DkimSignerTest, NoKeyNoSignature) {
  auto keys = ParseDkimKeys(kKeys, *dir_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  auto signer = DkimSigner::Create(*std::move(keys));
  ASSERT_TRUE(signer.ok());
  auto none = (*signer)->Sign("From: a@example.net\r\n\r\nx\r\n", "T");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto no_from = (*signer)->Sign("Subject: x\r\n\r\nx\r\n", "T");
  ASSERT_TRUE(no_from.ok());
  EXPECT_TRUE(no_from->empty());
  // "example.test" must not match "notexample.test".
  EXPECT_EQ((*signer)->SigningDomain("From: a@notexample.test\r\n\r\n"), "");
}

TEST_F(DkimSignerTest, SinkLoadsTheKeysAgainWhenTheyChange) {
  const std::string path = *dir_ + "/keys.yaml";
  auto write = [&](const std::string& text) {
    {
      std::ofstream out(path + ".new");
      out << text;
    }
    ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
  };
  auto keys = [](const std::string& selector) {
    return "domains:\n  example.test:\n    selector: " + selector +
           "\n    algorithm: rsa-sha256\n    key: rsa.pem\n";
  };
  const std::string message = "From: a@example.test\r\n\r\nbody\r\n";
  write(keys("first"));
  DkimSignOptions options;
  options.keys_path = path;
  options.check_interval = absl::ZeroDuration();
  auto sink = DkimSignSink::Create(options);
  ASSERT_TRUE(sink.ok()) << sink.status();
  auto sigs = (*sink)->Signer()->Sign(message, "T");
  ASSERT_TRUE(sigs.ok() && sigs->size() == 1u);
  EXPECT_TRUE(absl::StrContains((*sigs)[0], "s=first;")) << (*sigs)[0];

  write(keys("second"));
  sigs = (*sink)->Signer()->Sign(message, "T");
  ASSERT_TRUE(sigs.ok() && sigs->size() == 1u);
  EXPECT_TRUE(absl::StrContains((*sigs)[0], "s=second;")) << (*sigs)[0];

  // A set that does not load is refused; the previous keys stay.
  write(
      "domains:\n  example.test:\n    selector: third\n"
      "    key: missing.pem\n");
  sigs = (*sink)->Signer()->Sign(message, "T");
  ASSERT_TRUE(sigs.ok() && sigs->size() == 1u);
  EXPECT_TRUE(absl::StrContains((*sigs)[0], "s=second;")) << (*sigs)[0];
  std::remove(path.c_str());
}

}  // namespace
}  // namespace sinkline::sinks
