// What one lease may stage (issue 15): the number and the bytes of staged
// edits are bounded; past either limit a staging call is refused with
// RESOURCE_EXHAUSTED, stages nothing, and what the lease staged before is
// published whole. On the LeaseTable and through the Content service.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <boost/asio/thread_pool.hpp>
#include <filesystem>
#include <fstream>

#include "sink_broker/content_service.h"
#include "sink_broker/lease.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class LeaseLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ =
        fs::path(::testing::TempDir()) /
        ("lease-limits-" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::ofstream(path_) << "Subject: x\r\n\r\nbody\r\n";
    binding_.set_name(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    binding_.set_content_access(v1::CONTENT_ACCESS_READ_WRITE);
    record_ = std::make_shared<MessageRecord>(
        path_.string(), [this](const std::vector<v1::ContentEdit>& edits) {
          published_.push_back(edits.size());
          return absl::OkStatus();
        });
    v1::Envelope env;
    env.set_mail_from("a@example.net");
    env.add_recipients()->set_address("b@example.test");
    record_->set_envelope(env);
  }
  void TearDown() override {
    table_.CancelTimers();
    pool_.join();
    fs::remove(path_);
  }

  std::string Grant() {
    auto lease = table_.Grant(record_, binding_, 30s, 30s);
    EXPECT_TRUE(lease.ok()) << lease.status();
    return (*lease)->token;
  }
  static v1::ContentEdit Header(int n) {
    v1::ContentEdit e;
    e.mutable_add_header()->set_name("X-Edit");
    e.mutable_add_header()->set_value(std::to_string(n));
    return e;
  }
  static v1::ContentEdit Write(size_t bytes) {
    v1::ContentEdit e;
    e.mutable_write_range()->set_offset(0);
    e.mutable_write_range()->set_data(std::string(bytes, 'x'));
    return e;
  }
  double Refused(const char* limit) {
    return MetricsRegistry::Default()
        .GetCounter("sinkline_lease_staged_refused_total", "",
                    {{"binding", binding_.name()}, {"limit", limit}})
        .Value();
  }

  fs::path path_;
  v1::Binding binding_;
  boost::asio::thread_pool pool_{1};
  LeaseTable table_{
      pool_, LeaseLimits{.max_staged_edits = 3, .max_staged_bytes = 10000}};
  std::shared_ptr<MessageRecord> record_;
  std::vector<size_t> published_;
};

TEST_F(LeaseLimitsTest, EditsPastTheCountAreRefusedAndTheRestPublishes) {
  const std::string token = Grant();
  ASSERT_TRUE(table_.StageContent(token, Header(1)).ok());
  v1::EnvelopeEdit rcpt;
  rcpt.mutable_add_recipient()->set_address("c@example.test");
  ASSERT_TRUE(table_.StageEnvelope(token, rcpt).ok());
  ASSERT_TRUE(table_.StageContent(token, Header(2)).ok());
  const absl::Status fourth = table_.StageContent(token, Header(3));
  EXPECT_EQ(fourth.code(), absl::StatusCode::kResourceExhausted) << fourth;
  EXPECT_NE(fourth.message().find("--lease-max-staged-edits"),
            std::string::npos)
      << fourth;
  v1::EnvelopeEdit more;
  more.mutable_add_recipient()->set_address("d@example.test");
  EXPECT_EQ(table_.StageEnvelope(token, more).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Refused("edits"), 2);
  ASSERT_TRUE(table_.Release(token, false).ok());
  // The two header edits, in one publication; the one recipient.
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0], 2u);
  EXPECT_EQ(record_->envelope().recipients_size(), 2);
}

TEST_F(LeaseLimitsTest, BytesPastTheLimitAreRefused) {
  const std::string token = Grant();
  ASSERT_TRUE(table_.StageContent(token, Write(6000)).ok());
  const absl::Status big = table_.StageContent(token, Write(6000));
  EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted) << big;
  EXPECT_NE(big.message().find("--lease-max-staged-bytes"), std::string::npos);
  EXPECT_EQ(Refused("bytes"), 1);
  // What fits still does.
  EXPECT_TRUE(table_.StageContent(token, Write(3000)).ok());
  ASSERT_TRUE(table_.Release(token, false).ok());
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0], 2u);
}

TEST_F(LeaseLimitsTest, ABatchIsStagedWholeOrNotAtAll) {
  const std::string token = Grant();
  ASSERT_TRUE(table_.StageContent(token, Header(1)).ok());
  // Three more do not fit (3 at most): none of them is staged.
  EXPECT_EQ(table_.Stage(token, {Header(2), Header(3), Header(4)}, {}).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(table_.Stage(token, {Header(2), Header(3)}, {}).ok());
  ASSERT_TRUE(table_.Release(token, false).ok());
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0], 3u);
}

TEST_F(LeaseLimitsTest, TheContentServiceAnswersResourceExhausted) {
  auto service = MakeContentService(table_);
  auto server = StartGrpcServer("127.0.0.1:0", {service.get()});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Content::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(server->port),
                          grpc::InsecureChannelCredentials()));
  const std::string token = Grant();
  auto add = [&](int n) {
    grpc::ClientContext ctx;
    v1::AddHeaderRequest req;
    req.set_token(token);
    req.mutable_header()->set_name("X-Edit");
    req.mutable_header()->set_value(std::to_string(n));
    v1::EditResponse resp;
    return stub->AddHeader(&ctx, req, &resp);
  };
  for (int n = 0; n < 3; ++n) ASSERT_TRUE(add(n).ok()) << n;
  const grpc::Status refused = add(3);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find("--lease-max-staged-edits"),
            std::string::npos)
      << refused.error_message();
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_token(token);
    v1::ReleaseResponse resp;
    ASSERT_TRUE(stub->Release(&ctx, req, &resp).ok());
  }
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0], 3u);
  server->Stop();
}

}  // namespace
}  // namespace sinkline::broker
