#include "sink_broker/trace.h"

#include <gtest/gtest.h>

namespace sinkline::broker {
namespace {

v1::SessionInfo Session() {
  v1::SessionInfo s;
  s.set_helo_name("client.example.net");
  s.set_esmtp(true);
  s.mutable_client()->set_ip("192.0.2.7");
  s.set_server_hostname("mx.example.test");
  return s;
}

const absl::Time kWhen = absl::FromUnixSeconds(1795600000);  // a Wednesday

TEST(ReceivedHeader, OneRecipientPlainEsmtp) {
  v1::Envelope env;
  env.add_recipients()->set_address("bob@example.test");
  EXPECT_EQ(ReceivedHeader(Session(), env, "0ABCDEF123XYZ789", kWhen),
            "Received: from client.example.net ([192.0.2.7])\r\n"
            "\tby mx.example.test (Sinkline) with ESMTP id "
            "0ABCDEF123XYZ789\r\n"
            "\tfor <bob@example.test>; Wed, 25 Nov 2026 09:46:40 +0000\r\n");
}

TEST(ReceivedHeader, ManyRecipientsAreNotDisclosed) {
  v1::Envelope env;
  env.add_recipients()->set_address("a@example.test");
  env.add_recipients()->set_address("b@example.test");
  const std::string h = ReceivedHeader(Session(), env, "Q", kWhen);
  EXPECT_EQ(h.find("for <"), std::string::npos) << h;
}

TEST(ReceivedHeader, ProtocolNamesFollowRfc3848AndRfc6531) {
  v1::Envelope env;
  auto s = Session();
  s.mutable_tls()->set_active(true);
  s.mutable_tls()->set_version("TLSv1.3");
  s.mutable_tls()->set_cipher("TLS_AES_256_GCM_SHA384");
  EXPECT_NE(ReceivedHeader(s, env, "Q", kWhen).find("with ESMTPS id Q"),
            std::string::npos);
  EXPECT_NE(ReceivedHeader(s, env, "Q", kWhen)
                .find("(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)"),
            std::string::npos);
  s.set_auth_identity("alice");
  EXPECT_NE(ReceivedHeader(s, env, "Q", kWhen).find("with ESMTPSA id"),
            std::string::npos);
  auto* p = env.add_mail_params();
  p->set_key("SMTPUTF8");
  EXPECT_NE(ReceivedHeader(s, env, "Q", kWhen).find("with UTF8SMTPSA id"),
            std::string::npos);
  auto plain = Session();
  plain.set_esmtp(false);
  EXPECT_NE(
      ReceivedHeader(plain, v1::Envelope(), "Q", kWhen).find("with SMTP id"),
      std::string::npos);
}

TEST(ReceivedHeader, Ipv6LiteralAndHostileHeloCannotBreakTheField) {
  auto s = Session();
  s.mutable_client()->set_ip("2001:db8::1");
  s.set_helo_name("evil\r\nX-Injected: yes (x);");
  const std::string h = ReceivedHeader(s, v1::Envelope(), "Q", kWhen);
  EXPECT_NE(h.find("([IPv6:2001:db8::1])"), std::string::npos) << h;
  EXPECT_EQ(h.find("\r\nX-Injected"), std::string::npos) << h;
  EXPECT_NE(h.find("from evilX-Injected:yesx ("), std::string::npos) << h;
}

}  // namespace
}  // namespace sinkline::broker
