// The milter wire codec: framing fed one byte at a time, option
// negotiation, each reply decoded, and malformed or oversized packets
// refused with a clear error.
#include "sinks/milter/milter_codec.h"

#include <gtest/gtest.h>

#include <string>

#include "sinks/milter/milter_connection.h"
#include "sinks/milter/milter_replay.h"
#include "sinks/milter/milter_verdict.h"

namespace sinkline::milter {
namespace {

std::string U32(uint32_t v) {
  std::string s(4, '\0');
  s[0] = static_cast<char>(v >> 24);
  s[1] = static_cast<char>(v >> 16);
  s[2] = static_cast<char>(v >> 8);
  s[3] = static_cast<char>(v);
  return s;
}

std::string Z(absl::string_view s) { return std::string(s) + '\0'; }

TEST(MilterCodec, EncodesLengthCodeAndData) {
  EXPECT_EQ(Encode('C', "ab"), U32(3) + "Cab");
  EXPECT_EQ(Encode('A', ""), U32(1) + "A");
}

TEST(MilterCodec, DecodesPacketsFedOneByteAtATime) {
  const std::string wire = Encode('h', Z("X-A") + Z("1")) + Encode('c', "") +
                           Encode('y', Z("550 5.7.1 no"));
  Decoder d;
  std::vector<Packet> got;
  for (char c : wire) {
    d.Feed(std::string(1, c));
    for (;;) {
      auto p = d.Next();
      ASSERT_TRUE(p.ok()) << p.status();
      if (!p->has_value()) break;
      got.push_back(**p);
    }
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].code, 'h');
  EXPECT_EQ(got[0].data, Z("X-A") + Z("1"));
  EXPECT_EQ(got[1].code, 'c');
  EXPECT_EQ(got[2].code, 'y');
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(MilterCodec, RefusesZeroAndOversizedLengthsBeforeAllocating) {
  Decoder zero;
  zero.Feed(U32(0));
  auto p = zero.Next();
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(IsProtocolError(p.status()));

  Decoder big(1024);
  // A 4 GB length with no data behind it: refused at once, not awaited.
  big.Feed(U32(0xffffffff));
  p = big.Next();
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(IsProtocolError(p.status()));
  EXPECT_NE(p.status().message().find("exceeds the limit"), std::string::npos);

  Decoder fits(1024);
  fits.Feed(U32(1024));
  p = fits.Next();
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());
}

TEST(MilterCodec, OptionNegotiation) {
  Options offer;
  EXPECT_EQ(EncodeOptneg(offer), U32(6) + U32(kAllActions) + U32(kAllProtocol));
  const std::string answer = U32(6) + U32(kAddHdrs | kChgBody) +
                             U32(kNoRcpt | kNrHdr | 0x10000000) + U32(1) +
                             Z("{tls_version} {cipher}") + U32(5) + Z("i");
  auto got = DecodeOptneg(answer, offer);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version, 6u);
  EXPECT_EQ(got->actions, kAddHdrs | kChgBody);
  // SMFIP_MDS_1M was not offered: dropped, not an error.
  EXPECT_EQ(got->protocol, kNoRcpt | kNrHdr);
  EXPECT_EQ(got->macros.at(1), "{tls_version} {cipher}");
  EXPECT_EQ(got->macros.at(5), "i");
}

TEST(MilterCodec, OptionNegotiationErrors) {
  Options offer;
  offer.actions = kAddHdrs;
  struct Case {
    std::string data;
    const char* why;
  } cases[] = {
      {U32(6) + U32(0), "short"},
      {U32(1) + U32(0) + U32(0), "version 1"},
      {U32(7) + U32(0) + U32(0), "version 7"},
      {U32(6) + U32(kChgBody) + U32(0), "action not offered"},
      {U32(6) + U32(0) + U32(0) + U32(1) + "j", "macro list without NUL"},
      {U32(6) + U32(0) + U32(0) + U32(9) + Z("j"), "stage 9"},
      {U32(6) + U32(0) + U32(0) + "ab", "truncated list"},
  };
  for (const auto& c : cases) {
    auto got = DecodeOptneg(c.data, offer);
    EXPECT_FALSE(got.ok()) << c.why;
    EXPECT_TRUE(IsProtocolError(got.status())) << c.why;
  }
}

TEST(MilterCodec, CommandsData) {
  EXPECT_EQ(EncodeConnect("[192.0.2.1]", '4', 25, "192.0.2.1"),
            Z("[192.0.2.1]") + "4" + std::string("\0\x19", 2) + Z("192.0.2.1"));
  EXPECT_EQ(EncodeConnect("localhost", 'U', 0, ""), Z("localhost") + "U");
  EXPECT_EQ(EncodeEnvelope("a@b", {"SIZE=10", "BODY=8BITMIME"}),
            Z("<a@b>") + Z("SIZE=10") + Z("BODY=8BITMIME"));
  EXPECT_EQ(EncodeEnvelope("", {}), Z("<>"));
  EXPECT_EQ(EncodeHeader("Subject", "hi"), Z("Subject") + Z("hi"));
  EXPECT_EQ(EncodeMacros('C', {{"j", "mx"}, {"{daemon_name}", "d"}}),
            "C" + Z("j") + Z("mx") + Z("{daemon_name}") + Z("d"));
}

absl::StatusOr<Reply> Decode(char code, const std::string& data) {
  return DecodeReply(Packet{code, data});
}

TEST(MilterCodec, DecodesEachReply) {
  using K = Reply::Kind;
  EXPECT_EQ(Decode('c', "")->kind, K::kContinue);
  EXPECT_EQ(Decode('a', "")->kind, K::kAccept);
  EXPECT_EQ(Decode('r', "")->kind, K::kReject);
  EXPECT_EQ(Decode('t', "")->kind, K::kTempfail);
  EXPECT_EQ(Decode('d', "")->kind, K::kDiscard);
  EXPECT_EQ(Decode('6', "")->kind, K::kShutdown);
  EXPECT_EQ(Decode('f', "")->kind, K::kConnFail);
  EXPECT_EQ(Decode('s', "")->kind, K::kSkip);
  EXPECT_EQ(Decode('p', "")->kind, K::kProgress);
  EXPECT_TRUE(Decode('c', "")->final());
  EXPECT_FALSE(Decode('p', "")->final());

  auto y = Decode('y', Z("554 5.7.1 Gtube pattern"));
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->kind, K::kReplyCode);
  EXPECT_EQ(y->code, 554);
  EXPECT_EQ(y->enhanced, "5.7.1");
  EXPECT_EQ(y->text, "Gtube pattern");

  y = Decode('y', Z("451-4.7.1 one\r\n451 4.7.1 two"));
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->code, 451);
  EXPECT_EQ(y->text, "one two");

  y = Decode('y', Z("550 no enhanced code"));
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->enhanced, "");
  EXPECT_EQ(RefusalReply(*y).enhanced, "5.7.1");

  auto h = Decode('h', Z("X-Spam") + Z("yes"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->kind, K::kAddHeader);
  EXPECT_EQ(h->name, "X-Spam");
  EXPECT_EQ(h->value, "yes");

  auto i = Decode('i', U32(2) + Z("DKIM-Signature") + Z("v=1;\n\tb=x"));
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i->kind, K::kInsHeader);
  EXPECT_EQ(i->index, 2u);
  EXPECT_EQ(NormalizeFolding(i->value), "v=1;\r\n\tb=x");
  // With SMFIP_HDR_LEADSPC the milter sends the space after the colon.
  EXPECT_EQ(HeaderValue(" v=1;\n\tb=x", true), "v=1;\r\n\tb=x");
  EXPECT_EQ(HeaderValue("  two", true), " two");
  EXPECT_EQ(HeaderValue(" kept", false), " kept");

  auto m = Decode('m', U32(1) + Z("Subject") + Z(""));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->kind, K::kChgHeader);
  EXPECT_EQ(m->value, "");

  auto add = Decode('2', Z("<c@d>") + Z("NOTIFY=NEVER"));
  ASSERT_TRUE(add.ok());
  EXPECT_EQ(add->kind, K::kAddRcpt);
  EXPECT_EQ(add->address, "c@d");
  EXPECT_EQ(add->args, "NOTIFY=NEVER");
  EXPECT_EQ(Decode('+', Z("c@d"))->address, "c@d");
  EXPECT_EQ(Decode('-', Z("<c@d>"))->kind, K::kDelRcpt);

  auto from = Decode('e', Z("<>"));
  ASSERT_TRUE(from.ok());
  EXPECT_EQ(from->kind, K::kChgFrom);
  EXPECT_EQ(from->address, "");

  auto q = Decode('q', Z("looks odd"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->kind, K::kQuarantine);
  EXPECT_EQ(q->text, "looks odd");

  auto b = Decode('b', std::string("new\r\nbody\0", 10));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->kind, K::kReplBody);
  EXPECT_EQ(b->body.size(), 10u);
}

TEST(MilterCodec, MalformedRepliesAreErrorsNeverCrashes) {
  struct Case {
    char code;
    std::string data;
  } cases[] = {
      {'y', "550 5.7.1 no NUL"},
      {'y', Z("250 2.0.0 ok")},         // not a refusal
      {'y', Z("5x0 no")},               // not a code
      {'y', Z("550 ok\r\n451 mixed")},  // codes differ
      {'y', Z("")},
      {'h', Z("X-A")},            // value missing
      {'h', Z("") + Z("v")},      // empty name
      {'i', "ab"},                // index truncated
      {'m', U32(1) + "Subject"},  // no NUL
      {'+', ""},
      {'+', Z("<>")},  // empty recipient
      {'-', "x"},
      {'q', "why"},
      {'l', U32(0) + Z("j")},  // SETSYMLIST outside OPTNEG
      {'Z', ""},               // unknown
  };
  for (const auto& c : cases) {
    auto r = Decode(c.code, c.data);
    EXPECT_FALSE(r.ok()) << c.code << " " << c.data;
    EXPECT_TRUE(IsProtocolError(r.status())) << r.status();
  }
  // Every prefix of every valid packet, and random junk: never a crash.
  const std::string valid[] = {Z("550 5.7.1 x"), U32(3) + Z("A") + Z("b"),
                               Z("<a@b>") + Z("X=1")};
  for (const auto& v : valid) {
    for (size_t n = 0; n <= v.size(); ++n) {
      for (char code : std::string("yim2+-eqhb")) {
        (void)Decode(code, v.substr(0, n));
      }
    }
  }
}

TEST(MilterAddress, Forms) {
  auto a = ParseMilterAddress("inet:127.0.0.1:8891");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->unix_socket);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 8891);
  a = ParseMilterAddress("inet:11332@localhost");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "localhost");
  EXPECT_EQ(a->port, 11332);
  a = ParseMilterAddress("inet6:[::1]:25");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  a = ParseMilterAddress("unix:/run/opendkim/opendkim.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->unix_socket);
  EXPECT_EQ(a->host, "/run/opendkim/opendkim.sock");
  for (const char* bad : {"", "inet:host", "inet::25", "inet:h:0",
                          "inet:h:70000", "tcp:h:1", "unix:"}) {
    EXPECT_FALSE(ParseMilterAddress(bad).ok()) << bad;
  }
}

TEST(MilterReplay, SplitsHeadersAndBody) {
  auto s = Split("Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\nbody\r\n");
  ASSERT_EQ(s.headers.size(), 2u);
  EXPECT_EQ(s.headers[0].first, "Received");
  EXPECT_EQ(s.headers[0].second, " from a\r\n\tby b");
  EXPECT_EQ(s.headers[1].second, " hi");
  EXPECT_EQ(s.body, "body\r\n");
  EXPECT_EQ(Split("Subject: x\r\n").body, "");
  EXPECT_TRUE(Split("").headers.empty());
  EXPECT_EQ(Split("no header line\r\n").body, "no header line\r\n");
}

TEST(MilterReplay, MacroLists) {
  EXPECT_EQ(MacroConfig::Parse("j {daemon_name}, _"),
            (std::vector<std::string>{"j", "daemon_name", "_"}));
  v1::Event e;
  e.mutable_session()->mutable_client()->set_ip("192.0.2.7");
  e.mutable_session()->set_server_hostname("mx.example.test");
  e.set_queue_id("Q1");
  e.mutable_envelope()->set_mail_from("a@example.test");
  MacroConfig c;
  EXPECT_EQ(MacroValue("j", e, c), "mx.example.test");
  EXPECT_EQ(MacroValue("_", e, c), "unknown [192.0.2.7]");
  EXPECT_EQ(MacroValue("client_addr", e, c), "192.0.2.7");
  EXPECT_EQ(MacroValue("i", e, c), "Q1");
  EXPECT_EQ(MacroValue("mail_addr", e, c), "a@example.test");
  EXPECT_EQ(MacroValue("daemon_name", e, c), "sinkline");
  EXPECT_EQ(MacroValue("nonesuch", e, c), "");
}

}  // namespace
}  // namespace sinkline::milter
