// Fuzz target for the Content service as a hostile or broken sink calls it
// (sink_broker/content_service.h over a LeaseTable, lease.h): an in-process
// gRPC server, no network, one message on disk with a lease granted on it
// per input.
//
// Input: [0] flags (1 read-write lease, else read; 2 a second lease,
// read, on the same message; 4 claim the queue id and binding in metadata;
// 8 claim another queue id), [1..2] the message's length L (big-endian),
// L octets of message, then calls: [op][n (2 octets, big-endian)] and n
// octets of the call's serialized request. op % 12 picks ReadRange,
// ReadHeaders, WriteRange, AddHeader, ChangeHeader, DeleteHeader,
// ReplaceBody (the request split into up to 4 stream messages), SetSender,
// AddRecipient, RemoveRecipient, Renew or Release; op & 0x80 keeps the
// token the input gives instead of the lease's, op & 0x40 takes the
// second lease's.
//
// Invariants checked (a violation aborts): no call succeeds with a token
// that is no lease's; a read lease never edits; a range read gives no more
// than it asked for, from where it asked, inside the size it reports; a
// released lease's token is refused afterwards; every call ends (deadline
// 10 s) with OK or a canonical refusal; nothing is left active once the
// input is done.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "sink_broker/content_service.h"
#include "sink_broker/lease.h"
#include "sink_broker/message_edit.h"
#include "sinkline/v1/content.grpc.pb.h"

namespace sinkline::broker {
namespace {

[[noreturn]] void Violation(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "content_fuzz: invariant violated: %s: %.600s\n", what,
               detail.c_str());
  std::abort();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

struct World {
  World() {
    // The broker's log is for people; SINKLINE_FUZZ_TRACE=1 keeps it. The
    // logger exists before the world, so that it outlives the world's
    // threads at exit (see Stop).
    spdlog::default_logger();
    // Likewise OpenSSL (lease tokens), whose clean-up at exit is registered
    // when it is first used.
    OPENSSL_init_crypto(0, nullptr);
    if (std::getenv("SINKLINE_FUZZ_TRACE") == nullptr) {
      spdlog::set_level(spdlog::level::off);
    }
    dir = (std::filesystem::temp_directory_path() /
           "sinkline-content-fuzz-XXXXXX")
              .string();
    if (::mkdtemp(dir.data()) == nullptr) Violation("mkdtemp");
    service = MakeContentService(leases);
    grpc::ServerBuilder b;
    b.RegisterService(service.get());
    server = b.BuildAndStart();
    if (!server) Violation("in-process server");
    stub = v1::Content::NewStub(server->InProcessChannel({}));
    std::atexit(Stop);
  }
  // At exit, before the logger goes: no call in flight, no timer armed and
  // the lease table's threads joined.
  static void Stop();
  std::string dir;
  boost::asio::thread_pool pool{2};
  LeaseTable leases{pool};
  std::unique_ptr<grpc::Service> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Content::Stub> stub;
};

World& TheWorld() {
  static World* w = new World();  // lives for the process
  return *w;
}

void World::Stop() {
  World& w = TheWorld();
  w.server->Shutdown();
  w.leases.CancelTimers();
  w.pool.join();
  // gRPC's and OpenSSL's own threads and per-thread state would race with
  // their libraries' clean-up at exit: the process ends here, its work done.
  std::fflush(nullptr);
  std::_Exit(0);
}

bool Refusal(grpc::StatusCode c) {
  return c == grpc::StatusCode::NOT_FOUND ||
         c == grpc::StatusCode::FAILED_PRECONDITION ||
         c == grpc::StatusCode::PERMISSION_DENIED ||
         c == grpc::StatusCode::INVALID_ARGUMENT ||
         c == grpc::StatusCode::UNAUTHENTICATED ||
         c == grpc::StatusCode::OUT_OF_RANGE ||
         c == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

void Run(const uint8_t* data, size_t size) {
  if (size < 3) return;
  World& w = TheWorld();
  const uint8_t flags = data[0];
  const size_t len = std::min<size_t>((data[1] << 8) | data[2], size - 3);
  const std::string message(reinterpret_cast<const char*>(data) + 3, len);
  const std::string path = w.dir + "/m.msg";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << message;
  }
  // Edits publish a new version of the file, as the spool does.
  auto record = std::make_shared<MessageRecord>(
      path, [path](const std::vector<v1::ContentEdit>& edits) -> absl::Status {
        auto size = RewriteMessage(path, path + ".new", edits);
        if (!size.ok()) return size.status();
        std::filesystem::rename(path + ".new", path);
        return absl::OkStatus();
      });
  record->set_queue_id("QFUZZ1");
  v1::Envelope env;
  env.set_mail_from("a@example.test");
  env.add_recipients()->set_address("b@example.test");
  record->set_envelope(env);
  v1::Binding binding;
  binding.set_name("fuzz-writer");
  const bool writer = flags & 1;
  binding.set_content_access(writer ? v1::CONTENT_ACCESS_READ_WRITE
                                    : v1::CONTENT_ACCESS_READ);
  auto lease = w.leases.Grant(record, binding, std::chrono::seconds(30),
                              std::chrono::seconds(60));
  if (!lease.ok()) Violation("grant", lease.status().ToString());
  std::string tokens[2] = {(*lease)->token, ""};
  bool write_lease[2] = {writer, false};
  if (flags & 2) {
    v1::Binding reader;
    reader.set_name("fuzz-reader");
    reader.set_content_access(v1::CONTENT_ACCESS_READ);
    auto second = w.leases.Grant(record, reader, std::chrono::seconds(30),
                                 std::chrono::seconds(60));
    if (second.ok()) tokens[1] = (*second)->token;
  }
  bool released[2] = {false, false};

  size_t pos = 3 + len;
  int calls = 0;
  while (pos + 3 <= size && calls++ < 64) {
    const uint8_t op = data[pos];
    const size_t n =
        std::min<size_t>((data[pos + 1] << 8) | data[pos + 2], size - pos - 3);
    const char* req_bytes = reinterpret_cast<const char*>(data) + pos + 3;
    pos += 3 + n;
    const int which = (op & 0x40) && !tokens[1].empty() ? 1 : 0;
    const bool own_token = !(op & 0x80);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
    if (flags & 4) {
      ctx.AddMetadata("sinkline-queue-id", flags & 8 ? "QOTHER" : "QFUZZ1");
      ctx.AddMetadata("sinkline-binding",
                      which == 0 ? binding.name() : "fuzz-reader");
    }
    // The token the call carries, once its request is parsed.
    std::string token;
    auto fix = [&](auto& req) -> bool {
      if (!req.ParseFromArray(req_bytes, static_cast<int>(n))) return false;
      if (own_token) req.set_token(tokens[which]);
      token = req.token();
      return true;
    };
    grpc::Status st;
    bool edit = false;
    v1::EditResponse edit_resp;
    switch (op % 12) {
      case 0: {
        v1::ReadRangeRequest req;
        if (!fix(req)) continue;
        auto reader = w.stub->ReadRange(&ctx, req);
        v1::ReadRangeResponse resp;
        std::string got;
        uint64_t first = 0, total = 0;
        bool any = false;
        while (reader->Read(&resp)) {
          if (!any) first = resp.offset();
          any = true;
          got += resp.data();
          total = resp.total_size();
        }
        st = reader->Finish();
        if (st.ok() && any) {
          if (req.length() != 0 && got.size() > req.length()) {
            Violation("read more than asked");
          }
          if (first != req.offset() || first + got.size() > total) {
            Violation("read outside the message");
          }
        }
        break;
      }
      case 1: {
        v1::ReadHeadersRequest req;
        if (!fix(req)) continue;
        v1::ReadHeadersResponse resp;
        st = w.stub->ReadHeaders(&ctx, req, &resp);
        break;
      }
      case 2: {
        v1::WriteRangeRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->WriteRange(&ctx, req, &edit_resp);
        break;
      }
      case 3: {
        v1::AddHeaderRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->AddHeader(&ctx, req, &edit_resp);
        break;
      }
      case 4: {
        v1::ChangeHeaderRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->ChangeHeader(&ctx, req, &edit_resp);
        break;
      }
      case 5: {
        v1::DeleteHeaderRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->DeleteHeader(&ctx, req, &edit_resp);
        break;
      }
      case 6: {
        v1::ReplaceBodyRequest req;
        if (!fix(req)) continue;
        edit = true;
        auto writer_stream = w.stub->ReplaceBody(&ctx, &edit_resp);
        // The body in up to 4 pieces; the token in the first only.
        const std::string body = req.data();
        const size_t parts = 1 + (op >> 4) % 4;
        const size_t step = body.size() / parts + 1;
        for (size_t i = 0; i < parts; ++i) {
          v1::ReplaceBodyRequest piece;
          if (i == 0) piece.set_token(req.token());
          if (i * step < body.size()) {
            piece.set_data(body.substr(i * step, step));
          }
          if (!writer_stream->Write(piece)) break;
        }
        writer_stream->WritesDone();
        st = writer_stream->Finish();
        break;
      }
      case 7: {
        v1::SetSenderRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->SetSender(&ctx, req, &edit_resp);
        break;
      }
      case 8: {
        v1::AddRecipientRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->AddRecipient(&ctx, req, &edit_resp);
        break;
      }
      case 9: {
        v1::RemoveRecipientRequest req;
        if (!fix(req)) continue;
        edit = true;
        st = w.stub->RemoveRecipient(&ctx, req, &edit_resp);
        break;
      }
      case 10: {
        v1::RenewRequest req;
        if (!fix(req)) continue;
        v1::RenewResponse resp;
        st = w.stub->Renew(&ctx, req, &resp);
        break;
      }
      default: {
        v1::ReleaseRequest req;
        if (!fix(req)) continue;
        v1::ReleaseResponse resp;
        st = w.stub->Release(&ctx, req, &resp);
        if (st.ok() && token == tokens[which]) released[which] = true;
        break;
      }
    }
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      Violation("a call did not end in time");
    }
    if (st.ok()) {
      if (token != tokens[0] && (token != tokens[1] || tokens[1].empty())) {
        Violation("a call succeeded with a token that is no lease's", token);
      }
      const int by = token == tokens[0] ? 0 : 1;
      if (edit && !write_lease[by]) Violation("a read lease edited");
      if (released[by] && op % 12 != 11) {
        Violation("a released lease's token was taken");
      }
    } else if (!Refusal(st.error_code())) {
      Violation("an unexpected status", st.error_message());
    }
  }
  // The end of the input ends the leases.
  for (int i = 0; i < 2; ++i) {
    if (!tokens[i].empty() && !released[i]) {
      (void)w.leases.Release(tokens[i], /*discard=*/i == 1);
    }
  }
  record->ChainDone([] {});
  // A lease whose expiry timer fired is ended by that timer on the pool, a
  // moment after Release was refused; it must end, not stay.
  for (int i = 0; i < 500 && record->active_leases() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (record->active_leases() != 0) Violation("a lease is left active");
  (void)ReadFile(path);
}

}  // namespace
}  // namespace sinkline::broker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Strings that are not UTF-8 are what fuzzing makes; protobuf's log of
  // each would drown the output.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  sinkline::broker::Run(data, size);
  return 0;
}
