// The C++ SDK's Content client names the invocation's message and binding
// on every call (sinkline-queue-id, sinkline-binding): with the token of
// another message the broker refuses it (PERMISSION_DENIED); with its own,
// it reads, renews and releases. Over an in-process Content service and a
// LeaseTable with leases the test grants.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "sink_broker/content_service.h"
#include "sink_broker/lease.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/sdk/content.h"

namespace sinkline::broker {
namespace {

namespace fs = std::filesystem;

class SdkClaimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("sdk-claim-" +
         std::string(
             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    service_ = MakeContentService(leases_);
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }
  void TearDown() override {
    server_.Stop();
    leases_.CancelTimers();
    pool_.join();
    fs::remove_all(dir_);
  }

  // A message `qid` with `content`, and an invocation of binding `binding`
  // on it that holds a read lease: the request a sink would get.
  v1::SinkRequest Invocation(const std::string& qid, const std::string& binding,
                             const std::string& content) {
    const std::string path = (dir_ / (qid + ".msg")).string();
    std::ofstream(path, std::ios::binary) << content;
    auto record = std::make_shared<MessageRecord>(
        path,
        [](const std::vector<v1::ContentEdit>&) { return absl::OkStatus(); });
    record->set_queue_id(qid);
    records_.push_back(record);
    v1::Binding b;
    b.set_name(binding);
    b.set_content_access(v1::CONTENT_ACCESS_READ);
    auto lease = leases_.Grant(record, b, std::chrono::seconds(30),
                               std::chrono::seconds(60));
    EXPECT_TRUE(lease.ok()) << lease.status();
    v1::SinkRequest request;
    request.set_binding(binding);
    request.mutable_event()->set_queue_id(qid);
    request.mutable_lease()->set_token((*lease)->token);
    request.mutable_lease()->set_access(v1::CONTENT_ACCESS_READ);
    request.mutable_lease()->set_content_endpoint("127.0.0.1:" +
                                                  std::to_string(server_.port));
    return request;
  }

  boost::asio::thread_pool pool_{1};
  LeaseTable leases_{pool_};
  std::vector<std::shared_ptr<MessageRecord>> records_;
  std::unique_ptr<grpc::Service> service_;
  GrpcServer server_;
  fs::path dir_;
};

TEST_F(SdkClaimTest, AnotherMessagesTokenIsRefused) {
  const auto a = Invocation("QA0001", "reader", "Subject: a\r\n\r\nA\r\n");
  const auto b = Invocation("QB0002", "reader", "Subject: b\r\n\r\nB\r\n");
  auto& client = sdk::ContentClient::Default();

  // The invocation of message A, with B's token (a sink that mixed up its
  // leases): every call is refused.
  v1::SinkRequest mixed = a;
  *mixed.mutable_lease() = b.lease();
  const sdk::ClaimedLease wrong(mixed);
  auto read = client.ReadAll(wrong);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kPermissionDenied)
      << read.status();
  EXPECT_EQ(client.Renew(wrong, absl::Seconds(1)).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(client.Release(wrong).code(), absl::StatusCode::kPermissionDenied);

  // The same token under another binding's name: refused too.
  v1::SinkRequest other_binding = b;
  other_binding.set_binding("writer");
  EXPECT_EQ(client.ReadAll(sdk::ClaimedLease(other_binding)).status().code(),
            absl::StatusCode::kPermissionDenied);

  // Its own lease: read, renewed, released.
  auto own = client.ReadAll(sdk::ClaimedLease(b));
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(*own, "Subject: b\r\n\r\nB\r\n");
  EXPECT_TRUE(client.Renew(sdk::ClaimedLease(b), absl::Seconds(1)).ok());
  EXPECT_TRUE(client.Release(sdk::ClaimedLease(b)).ok());
  EXPECT_TRUE(client.Release(sdk::ClaimedLease(a)).ok());
}

TEST_F(SdkClaimTest, ClaimIsInTheMetadata) {
  const auto a = Invocation("QA0003", "stamp", "Subject: a\r\n\r\nA\r\n");
  grpc::ClientContext context;
  sdk::AddClaim(context, sdk::ClaimedLease(a));
  // A call through a stub of the sink's own carries what AddClaim put in:
  // the broker refuses B's token under A's claim.
  const auto b = Invocation("QB0004", "stamp", "Subject: b\r\n\r\nB\r\n");
  auto stub = sdk::ContentClient::Default().Stub(a.lease().content_endpoint());
  v1::RenewRequest req;
  req.set_token(b.lease().token());
  req.set_extend_ms(1000);
  v1::RenewResponse resp;
  const grpc::Status st = stub->Renew(&context, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << st.error_message();
}

}  // namespace
}  // namespace sinkline::broker
