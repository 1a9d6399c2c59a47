// The Content service's token and range rules, on an in-process server over
// a LeaseTable with leases the test grants.
#include "sink_broker/content_service.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "sink_broker/messages.h"
#include "sinkline/common/grpc_server.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

constexpr char kMessage[] = "Subject: hi\r\nX-A: 1\r\n\r\nbody line\r\n";

class ContentServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("content-service-" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "m.msg").string();
    std::ofstream(path_, std::ios::binary) << kMessage;
    record_ = std::make_shared<MessageRecord>(
        path_,
        [](const std::vector<v1::ContentEdit>&) { return absl::OkStatus(); });
    record_->set_queue_id("Q1");
    service_ = MakeContentService(leases_);
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = v1::Content::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_.port),
                            grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.Stop();
    leases_.CancelTimers();
    pool_.join();
    fs::remove_all(dir_);
  }

  std::string Grant(const std::string& binding, v1::ContentAccess access) {
    v1::Binding b;
    b.set_name(binding);
    b.set_content_access(access);
    auto lease = leases_.Grant(record_, b, std::chrono::seconds(30),
                               std::chrono::seconds(60));
    EXPECT_TRUE(lease.ok()) << lease.status();
    return (*lease)->token;
  }

  // Reads [offset, offset+length) and returns the status, the bytes in
  // `data` and the size the service reports.
  grpc::Status Read(const std::string& token, uint64_t offset, uint64_t length,
                    std::string* data, uint64_t* total,
                    const std::string& claim_queue_id = "") {
    grpc::ClientContext ctx;
    if (!claim_queue_id.empty()) {
      ctx.AddMetadata("sinkline-queue-id", claim_queue_id);
    }
    v1::ReadRangeRequest req;
    req.set_token(token);
    req.set_offset(offset);
    req.set_length(length);
    auto reader = stub_->ReadRange(&ctx, req);
    v1::ReadRangeResponse resp;
    data->clear();
    while (reader->Read(&resp)) {
      *data += resp.data();
      *total = resp.total_size();
    }
    return reader->Finish();
  }

  grpc::Status AddHeader(const std::string& token,
                         const std::string& claim_binding = "") {
    grpc::ClientContext ctx;
    if (!claim_binding.empty()) {
      ctx.AddMetadata("sinkline-binding", claim_binding);
    }
    v1::AddHeaderRequest req;
    req.set_token(token);
    req.mutable_header()->set_name("X-Checked");
    req.mutable_header()->set_value("yes");
    v1::EditResponse resp;
    return stub_->AddHeader(&ctx, req, &resp);
  }

  fs::path dir_;
  std::string path_;
  boost::asio::thread_pool pool_{1};
  LeaseTable leases_{pool_};
  std::shared_ptr<MessageRecord> record_;
  std::unique_ptr<grpc::Service> service_;
  GrpcServer server_;
  std::unique_ptr<v1::Content::Stub> stub_;
};

TEST_F(ContentServiceTest, ReadsRangesOfTheSnapshot) {
  const std::string token = Grant("reader", v1::CONTENT_ACCESS_READ);
  std::string data;
  uint64_t total = 0;
  ASSERT_TRUE(Read(token, 0, 0, &data, &total).ok());
  EXPECT_EQ(data, kMessage);
  EXPECT_EQ(total, sizeof kMessage - 1);
  ASSERT_TRUE(Read(token, 9, 2, &data, &total).ok());
  EXPECT_EQ(data, "hi");
  // Past the end: nothing, and it says so; at the end: empty, with the size.
  EXPECT_EQ(Read(token, 1000, 1, &data, &total).error_code(),
            grpc::StatusCode::OUT_OF_RANGE);
  ASSERT_TRUE(Read(token, sizeof kMessage - 1, 0, &data, &total).ok());
  EXPECT_EQ(data, "");
  EXPECT_EQ(total, sizeof kMessage - 1);
}

TEST_F(ContentServiceTest, TokensAreCheckedBeforeAnything) {
  std::string data;
  uint64_t total = 0;
  EXPECT_EQ(Read("no-such-token", 0, 0, &data, &total).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(AddHeader("no-such-token").error_code(),
            grpc::StatusCode::NOT_FOUND);
  const std::string reader = Grant("reader", v1::CONTENT_ACCESS_READ);
  // A read lease cannot write.
  EXPECT_EQ(AddHeader(reader).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // A token claimed for another message or binding is refused.
  EXPECT_EQ(Read(reader, 0, 0, &data, &total, "QOTHER").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  const std::string writer = Grant("writer", v1::CONTENT_ACCESS_READ_WRITE);
  EXPECT_EQ(AddHeader(writer, "reader").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(AddHeader(writer, "writer").ok());
}

TEST_F(ContentServiceTest, EndedLeasesSayWhy) {
  const std::string token = Grant("writer", v1::CONTENT_ACCESS_READ_WRITE);
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_token(token);
    v1::ReleaseResponse resp;
    ASSERT_TRUE(stub_->Release(&ctx, req, &resp).ok());
  }
  const grpc::Status again = AddHeader(token);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(again.error_message().find("released"), std::string::npos);
  leases_.MessageReleased(*record_);
  const grpc::Status gone = AddHeader(token);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(gone.error_message().find("message released"), std::string::npos);
}

// Envelope edits through the Content service get the grammar the edge
// enforces: an address that would smuggle a command into the relay's
// MAIL FROM / RCPT TO lines (or is simply not a mailbox) is INVALID_ARGUMENT
// and changes nothing.
TEST_F(ContentServiceTest, EnvelopeEditsAreMailboxes) {
  v1::Envelope env;
  env.set_mail_from("a@example.net");
  env.add_recipients()->set_address("b@example.test");
  record_->set_envelope(env);
  const std::string token = Grant("writer", v1::CONTENT_ACCESS_READ_WRITE);
  auto set_sender = [&](const std::string& from) {
    grpc::ClientContext ctx;
    v1::SetSenderRequest req;
    req.set_token(token);
    req.set_mail_from(from);
    v1::EditResponse resp;
    return stub_->SetSender(&ctx, req, &resp).error_code();
  };
  auto add = [&](const std::string& to, const std::string& param = "") {
    grpc::ClientContext ctx;
    v1::AddRecipientRequest req;
    req.set_token(token);
    req.mutable_recipient()->set_address(to);
    if (!param.empty()) {
      auto* p = req.mutable_recipient()->add_params();
      p->set_key("NOTIFY");
      p->set_value(param);
    }
    v1::EditResponse resp;
    return stub_->AddRecipient(&ctx, req, &resp).error_code();
  };
  auto remove = [&](const std::string& to) {
    grpc::ClientContext ctx;
    v1::RemoveRecipientRequest req;
    req.set_token(token);
    req.set_address(to);
    v1::EditResponse resp;
    return stub_->RemoveRecipient(&ctx, req, &resp).error_code();
  };
  const std::string injected =
      "x@example.test>\r\nRCPT TO:<injected@example.org>\r\nDATA\r\n"
      "smuggled\r\n.\r\nRSET\r\nMAIL FROM:<x@example.test";
  for (const std::string& bad :
       {injected, std::string("no-domain"), std::string("a@"),
        std::string("@example.test"), std::string("a b@example.test"),
        std::string("a@example.test\tDATA"),
        std::string("a\0b@example.test", 16), std::string("a,b@example.test"),
        std::string("caf\xc3\xa9@example.test"),
        std::string(300, 'a') + "@example.test"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(set_sender(bad), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(add(bad), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(remove(bad), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(add("c@example.test", "SUCCESS\r\nDATA"),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(add(""), grpc::StatusCode::INVALID_ARGUMENT);
  // Good edits still work, the null sender included.
  EXPECT_EQ(add("c@example.test", "SUCCESS,FAILURE"), grpc::StatusCode::OK);
  EXPECT_EQ(set_sender(""), grpc::StatusCode::OK);
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_token(token);
    v1::ReleaseResponse resp;
    ASSERT_TRUE(stub_->Release(&ctx, req, &resp).ok());
  }
  const v1::Envelope after = record_->envelope();
  EXPECT_EQ(after.mail_from(), "");
  ASSERT_EQ(after.recipients_size(), 2);
  EXPECT_EQ(after.recipients(0).address(), "b@example.test");
  EXPECT_EQ(after.recipients(1).address(), "c@example.test");
}

}  // namespace
}  // namespace sinkline::broker
