// The edge's stream to a broker, against an in-process broker stand-in on
// loopback: a session may send and close from its own thread at any moment,
// also while the broker ends the stream, and the stream reports its end
// exactly once. (The edge once wrote to a stream gRPC had already freed;
// the sanitizer build of this test catches that.)
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "sinkline/v1/session.grpc.pb.h"
#include "smtp_edge/broker_client.h"

namespace sinkline::edge {
namespace {

// Ends every stream at once with UNAVAILABLE, without reading it.
class RefusingBroker : public v1::SessionService::CallbackService {
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Stream(
      grpc::CallbackServerContext*) override {
    class R : public grpc::ServerBidiReactor<v1::SessionRequest,
                                             v1::SessionResponse> {
     public:
      R() { Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away")); }
      void OnDone() override { delete this; }
    };
    return new R;
  }
};

// Answers the start with a binding map, counts what it reads, and ends the
// stream when the edge half-closes.
class EchoBroker : public v1::SessionService::CallbackService {
 public:
  std::atomic<int> requests{0};

  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Stream(
      grpc::CallbackServerContext*) override {
    class R : public grpc::ServerBidiReactor<v1::SessionRequest,
                                             v1::SessionResponse> {
     public:
      explicit R(EchoBroker* b) : b_(b) { StartRead(&req_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        ++b_->requests;
        if (req_.has_start()) {
          resp_.mutable_binding_map();
          StartWrite(&resp_);
          return;  // the next read starts when the write is done
        }
        StartRead(&req_);
      }
      void OnWriteDone(bool) override { StartRead(&req_); }
      void OnDone() override { delete this; }

     private:
      EchoBroker* b_;
      v1::SessionRequest req_;
      v1::SessionResponse resp_;
    };
    return new R(this);
  }
};

class BrokerStreamTest : public ::testing::Test {
 protected:
  void Serve(grpc::Service* service) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    stub_ = v1::SessionService::NewStub(
        MakeBrokerChannel("127.0.0.1:" + std::to_string(port)));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  // What one stream reported.
  struct Seen {
    absl::Mutex mu;
    int done = 0;
    int responses = 0;
    grpc::Status status;
    bool Done() {
      absl::MutexLock lock(&mu);
      return done > 0;
    }
  };

  std::shared_ptr<BrokerStream> Open(std::shared_ptr<Seen> seen) {
    BrokerStream::Handler h;
    h.on_response = [seen](v1::SessionResponse) {
      absl::MutexLock lock(&seen->mu);
      ++seen->responses;
    };
    h.on_done = [seen](grpc::Status st) {
      absl::MutexLock lock(&seen->mu);
      ++seen->done;
      seen->status = st;
    };
    return BrokerStream::Open(stub_.get(), std::move(h));
  }

  static v1::SessionRequest Start() {
    v1::SessionRequest r;
    r.mutable_start()->mutable_session()->set_session_id("s");
    return r;
  }

  static bool WaitFor(const std::function<bool()>& cond) {
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!cond()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }

  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
};

TEST_F(BrokerStreamTest, SendingWhileTheBrokerEndsTheStreamIsSafe) {
  RefusingBroker broker;
  Serve(&broker);
  for (int i = 0; i < 200; ++i) {
    auto seen = std::make_shared<Seen>();
    auto stream = Open(seen);
    // The session keeps writing from its own thread through the moment the
    // stream ends, and after.
    int after = 0;
    while (after < 5) {
      stream->Send(Start());
      if (seen->Done()) ++after;
    }
    stream->Close();
    stream->Cancel();
    stream.reset();
    absl::MutexLock lock(&seen->mu);
    EXPECT_EQ(seen->done, 1);
    EXPECT_EQ(seen->status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(seen->status.error_message(), "going away");
  }
}

TEST_F(BrokerStreamTest, DroppedAndCancelledStreamsStillEndOnce) {
  RefusingBroker broker;
  Serve(&broker);
  std::vector<std::shared_ptr<Seen>> all;
  for (int i = 0; i < 100; ++i) {
    auto seen = std::make_shared<Seen>();
    all.push_back(seen);
    auto stream = Open(seen);
    stream->Send(Start());
    if (i % 2) stream->Cancel();
    // The session drops its reference at once; the stream lives on until
    // gRPC is done with it.
  }
  for (auto& seen : all) {
    ASSERT_TRUE(WaitFor([&] { return seen->Done(); }));
    absl::MutexLock lock(&seen->mu);
    EXPECT_EQ(seen->done, 1);
  }
}

TEST_F(BrokerStreamTest, CloseDeliversEveryQueuedRequestThenEnds) {
  EchoBroker broker;
  Serve(&broker);
  auto seen = std::make_shared<Seen>();
  auto stream = Open(seen);
  stream->Send(Start());
  ASSERT_TRUE(WaitFor([&] {
    absl::MutexLock lock(&seen->mu);
    return seen->responses == 1;
  }));
  for (int i = 0; i < 50; ++i) {
    v1::SessionRequest r;
    r.mutable_data()->set_transaction_id("t");
    r.mutable_data()->set_data(std::string(1000, 'x'));
    stream->Send(std::move(r));
  }
  stream->Close();
  stream->Send(Start());  // after Close: dropped
  ASSERT_TRUE(WaitFor([&] { return seen->Done(); }));
  absl::MutexLock lock(&seen->mu);
  EXPECT_EQ(seen->done, 1);
  EXPECT_TRUE(seen->status.ok()) << seen->status.error_message();
  EXPECT_EQ(broker.requests.load(), 51);
}

}  // namespace
}  // namespace sinkline::edge
