#include "sink_broker/content_service.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/util/time_util.h"
#include "sink_broker/peer_auth.h"
#include "sinkline/common/address.h"
#include "sinkline/common/grpc_status.h"

namespace sinkline::broker {

namespace {

using google::protobuf::util::TimeUtil;

// The content service: sinks read and write a message by lease token.
class ContentService final : public v1::Content::CallbackService {
 public:
  ContentService(LeaseTable* leases, const PeerLimits& limits)
      : leases_(leases),
        limits_(limits),
        streams_("content_streams", limits.content_streams_per_peer),
        bytes_("content_inflight_bytes",
               limits.content_inflight_bytes_per_peer) {}

  // Who the per-peer limits count: a certificate name, else the host.
  static std::string PeerKey(const grpc::CallbackServerContext* ctx) {
    const PeerCredentials c = PeerCredentials::From(*ctx);
    return c.cert_names.empty() ? c.host() : "cert:" + c.cert_names.front();
  }
  static grpc::Status Exhausted(const std::string& what) {
    CountPeerRefused("content", grpc::StatusCode::RESOURCE_EXHAUSTED);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, what);
  }
  // A stream's place in the per-peer stream limit, or null (refused).
  std::unique_ptr<PeerShare> TakeStream(
      const grpc::CallbackServerContext* ctx) {
    return TakeOne(streams_, PeerKey(ctx));
  }
  std::string StreamsExhausted() const {
    return absl::StrCat("this peer has ", streams_.limit(),
                        " Content streams open (--content-streams-per-peer)");
  }
  std::string BytesExhausted() const {
    return absl::StrCat("this peer has ", bytes_.limit(),
                        " bytes of writes in flight "
                        "(--content-inflight-bytes-per-peer)");
  }

  // One ReplaceBody stream per lease at a time: a second one would buffer a
  // second body for the same write.
  bool StartReplacing(const std::string& token) {
    absl::MutexLock lock(&replacing_mu_);
    return replacing_.insert(token).second;
  }
  void EndReplacing(const std::string& token) {
    absl::MutexLock lock(&replacing_mu_);
    replacing_.erase(token);
  }

  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx,
                                        const absl::Status& st) {
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(st));
    return r;
  }
  // A sink may say which message and binding it means in the call's
  // metadata (sinkline-queue-id, sinkline-binding; the SDKs send both): a
  // token of another message or binding is refused with PERMISSION_DENIED.
  static absl::Status CheckClaim(LeaseTable* leases,
                                 const grpc::CallbackServerContext* ctx,
                                 const std::string& token) {
    const auto& md = ctx->client_metadata();
    const auto q = md.find("sinkline-queue-id");
    const auto b = md.find("sinkline-binding");
    if (q == md.end() && b == md.end()) return absl::OkStatus();
    auto lease = leases->Find(token);
    if (!lease.ok()) return lease.status();
    if (q != md.end()) {
      const std::string claimed(q->second.data(), q->second.size());
      if (claimed != (*lease)->message->queue_id()) {
        return absl::PermissionDeniedError(
            absl::StrCat("this lease token is not for message ", claimed));
      }
    }
    if (b != md.end()) {
      const std::string claimed(b->second.data(), b->second.size());
      if (claimed != (*lease)->binding) {
        return absl::PermissionDeniedError(
            absl::StrCat("this lease token is not for binding ", claimed));
      }
    }
    return absl::OkStatus();
  }

  uint64_t SnapshotSize(const std::string& token) {
    auto lease = leases_->Find(token);
    struct stat st {};
    if (!lease.ok()) return 0;
    auto snapshot = (*lease)->snapshot();
    if (!snapshot || ::fstat(snapshot->fd(), &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_size);
  }

  class Reader : public grpc::ServerWriteReactor<v1::ReadRangeResponse> {
   public:
    Reader(ContentService* service, LeaseTable* leases,
           const grpc::CallbackServerContext* ctx,
           const v1::ReadRangeRequest& req)
        : slot_(service->TakeStream(ctx)) {
      if (!slot_) {
        End(Exhausted(service->StreamsExhausted()));
        return;
      }
      if (auto st = CheckClaim(leases, ctx, req.token()); !st.ok()) {
        End(ToGrpc(st));
        return;
      }
      auto lease = leases->Find(req.token());
      if (!lease.ok()) {
        End(ToGrpc(lease.status()));
        return;
      }
      // Our own reference to the snapshot, which keeps it open should the
      // lease end meanwhile (no descriptor of our own: pread needs none).
      snapshot_ = (*lease)->snapshot();
      if (!snapshot_) {
        End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "lease ended"));
        return;
      }
      struct stat st {};
      ::fstat(snapshot_->fd(), &st);
      size_ = static_cast<uint64_t>(st.st_size);
      if (req.offset() > size_) {
        End(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                         "offset past the end of the message"));
        return;
      }
      pos_ = req.offset();
      end_ = req.length() == 0 ? size_ : std::min(size_, pos_ + req.length());
      Next();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        End(grpc::Status::CANCELLED);
        return;
      }
      Next();
    }
    void OnDone() override { delete this; }

   private:
    void Next() {
      if (pos_ >= end_) {
        if (!sent_any_) {  // an empty range still tells the size
          sent_any_ = true;
          resp_.set_offset(pos_);
          resp_.set_total_size(size_);
          resp_.clear_data();
          StartWrite(&resp_);
          return;
        }
        End(grpc::Status::OK);
        return;
      }
      const size_t n = std::min<uint64_t>(65536, end_ - pos_);
      std::string buf(n, '\0');
      const ssize_t got = ::pread(snapshot_->fd(), buf.data(), n, pos_);
      if (got <= 0) {
        End(grpc::Status(grpc::StatusCode::INTERNAL, "read failed"));
        return;
      }
      buf.resize(static_cast<size_t>(got));
      resp_.set_offset(pos_);
      resp_.set_total_size(size_);
      resp_.set_data(std::move(buf));
      pos_ += static_cast<uint64_t>(got);
      sent_any_ = true;
      StartWrite(&resp_);
    }
    // Its place in the per-peer limit goes before the caller hears the
    // end: a next call right after it finds the place free.
    void End(const grpc::Status& st) {
      slot_.reset();
      snapshot_.reset();
      Finish(st);
    }
    std::unique_ptr<PeerShare> slot_;
    std::shared_ptr<SnapshotFile> snapshot_;
    uint64_t size_ = 0, pos_ = 0, end_ = 0;
    bool sent_any_ = false;
    v1::ReadRangeResponse resp_;
  };

  grpc::ServerWriteReactor<v1::ReadRangeResponse>* ReadRange(
      grpc::CallbackServerContext* ctx,
      const v1::ReadRangeRequest* req) override {
    return new Reader(this, leases_, ctx, *req);
  }

  grpc::ServerUnaryReactor* ReadHeaders(
      grpc::CallbackServerContext* ctx, const v1::ReadHeadersRequest* req,
      v1::ReadHeadersResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    auto lease = leases_->Find(req->token());
    if (!lease.ok()) return Done(ctx, lease.status());
    auto snapshot = (*lease)->snapshot();
    if (!snapshot) {
      return Done(ctx, absl::FailedPreconditionError("lease ended"));
    }
    auto index = (*lease)->message->HeaderIndex(*snapshot);
    if (!index.ok()) return Done(ctx, index.status());
    const ParsedHeader& h = **index;
    for (const auto& f : h.fields) {
      auto* out = resp->add_fields();
      out->set_name(f.name);
      std::string value = f.raw.substr(f.name.size() + 1);
      if (!value.empty() && value.front() == ' ') value.erase(0, 1);
      if (absl::EndsWith(value, "\r\n")) value.resize(value.size() - 2);
      // A protobuf string: octets that are not UTF-8 (8-bit mail) come as
      // U+FFFD; ReadRange gives the field's exact bytes.
      out->set_value(sinkline::ToValidUtf8(value));
    }
    resp->set_body_offset(h.body_offset);
    return Done(ctx, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* WriteRange(grpc::CallbackServerContext* ctx,
                                       const v1::WriteRangeRequest* req,
                                       v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    PeerShare inflight(&bytes_, PeerKey(ctx));
    if (!inflight.Grow(req->data().size())) {
      return Done(ctx, FromGrpc(Exhausted(BytesExhausted())));
    }
    v1::ContentEdit e;
    auto* w = e.mutable_write_range();
    w->set_offset(req->offset());
    w->set_data(req->data());
    w->set_truncate(req->truncate());
    return Stage(ctx, req->token(), std::move(e), resp);
  }

  grpc::ServerUnaryReactor* Stage(grpc::CallbackServerContext* ctx,
                                  const std::string& token,
                                  v1::ContentEdit edit,
                                  v1::EditResponse* resp) {
    auto st = leases_->StageContent(token, std::move(edit));
    if (st.ok()) resp->set_total_size(SnapshotSize(token));
    return Done(ctx, st);
  }
  grpc::ServerUnaryReactor* AddHeader(grpc::CallbackServerContext* ctx,
                                      const v1::AddHeaderRequest* req,
                                      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_add_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* ChangeHeader(grpc::CallbackServerContext* ctx,
                                         const v1::ChangeHeaderRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_change_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* DeleteHeader(grpc::CallbackServerContext* ctx,
                                         const v1::DeleteHeaderRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_delete_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }

  class BodyReader : public grpc::ServerReadReactor<v1::ReplaceBodyRequest> {
   public:
    BodyReader(ContentService* service, LeaseTable* leases,
               const grpc::CallbackServerContext* ctx, v1::EditResponse* resp)
        : service_(service),
          leases_(leases),
          ctx_(ctx),
          resp_(resp),
          slot_(service->TakeStream(ctx)),
          inflight_(&service->bytes_, PeerKey(ctx)) {
      if (!slot_) {
        End(Exhausted(service->StreamsExhausted()));
        return;
      }
      StartRead(&req_);
    }
    void OnReadDone(bool ok) override {
      if (ok) {
        if (first_) {
          // The token and the claim before any byte is kept: a caller
          // without a read-write lease must not make the broker buffer.
          first_ = false;
          token_ = req_.token();
          if (auto st = CheckWriter(); !st.ok()) {
            End(ToGrpc(st));
            return;
          }
          if (!service_->StartReplacing(token_)) {
            End(
                Exhausted("a ReplaceBody stream for this lease is already "
                          "open"));
            return;
          }
          replacing_ = true;
        } else if (!req_.token().empty() && req_.token() != token_) {
          End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           "one ReplaceBody stream, one lease token"));
          return;
        }
        const uint64_t max_body = service_->limits_.content_max_body_bytes;
        if (body_.size() + req_.data().size() > max_body) {
          End(Exhausted(absl::StrCat("new body larger than ", max_body,
                                     " bytes (--content-max-body-bytes)")));
          return;
        }
        if (!inflight_.Grow(req_.data().size())) {
          End(Exhausted(service_->BytesExhausted()));
          return;
        }
        body_ += req_.data();
        StartRead(&req_);
        return;
      }
      if (first_) {  // no message at all
        End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                         "ReplaceBody needs a lease token"));
        return;
      }
      v1::ContentEdit e;
      e.mutable_replace_body()->set_body(std::move(body_));
      auto st = leases_->StageContent(token_, std::move(e));
      inflight_.Reset();
      resp_->set_total_size(0);
      End(ToGrpc(st));
    }
    void OnDone() override {
      if (replacing_) service_->EndReplacing(token_);  // cancelled
      delete this;
    }

   private:
    absl::Status CheckWriter() {
      if (auto st = CheckClaim(leases_, ctx_, token_); !st.ok()) return st;
      auto lease = leases_->Find(token_);
      if (!lease.ok()) return lease.status();
      if ((*lease)->access != v1::CONTENT_ACCESS_READ_WRITE) {
        return absl::PermissionDeniedError(
            "read lease: writes need content_access read-write");
      }
      return absl::OkStatus();
    }

    bool first_ = true;
    bool replacing_ = false;
    ContentService* const service_;
    LeaseTable* const leases_;
    const grpc::CallbackServerContext* const ctx_;
    v1::EditResponse* const resp_;
    // What it holds (its place, its bytes, the lease's one ReplaceBody) goes
    // before the caller hears the end: a next call right after it finds
    // them free.
    void End(const grpc::Status& st) {
      if (replacing_) service_->EndReplacing(token_);
      replacing_ = false;
      inflight_.Reset();
      body_.clear();
      slot_.reset();
      Finish(st);
    }
    std::unique_ptr<PeerShare> slot_;
    PeerShare inflight_;
    v1::ReplaceBodyRequest req_;
    std::string token_, body_;
  };
  grpc::ServerReadReactor<v1::ReplaceBodyRequest>* ReplaceBody(
      grpc::CallbackServerContext* ctx, v1::EditResponse* resp) override {
    return new BodyReader(this, leases_, ctx, resp);
  }

  grpc::ServerUnaryReactor* Envelope(grpc::CallbackServerContext* ctx,
                                     const std::string& token,
                                     v1::EnvelopeEdit edit,
                                     v1::EditResponse* resp) {
    auto st = leases_->StageEnvelope(token, std::move(edit));
    if (st.ok()) resp->set_total_size(SnapshotSize(token));
    return Done(ctx, st);
  }
  grpc::ServerUnaryReactor* SetSender(grpc::CallbackServerContext* ctx,
                                      const v1::SetSenderRequest* req,
                                      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    e.set_set_sender(req->mail_from());
    return Envelope(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* AddRecipient(grpc::CallbackServerContext* ctx,
                                         const v1::AddRecipientRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    *e.mutable_add_recipient() = req->recipient();
    return Envelope(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* RemoveRecipient(
      grpc::CallbackServerContext* ctx, const v1::RemoveRecipientRequest* req,
      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    e.set_remove_recipient(req->address());
    return Envelope(ctx, req->token(), std::move(e), resp);
  }

  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* ctx,
                                  const v1::RenewRequest* req,
                                  v1::RenewResponse* resp) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    auto until = leases_->Renew(req->token(),
                                std::chrono::milliseconds(req->extend_ms()));
    if (until.ok()) {
      *resp->mutable_expires() = TimeUtil::MillisecondsToTimestamp(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              until->time_since_epoch())
              .count());
    }
    return Done(ctx, until.status());
  }

  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx,
                                    const v1::ReleaseRequest* req,
                                    v1::ReleaseResponse*) override {
    if (auto st = CheckClaim(leases_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    return Done(ctx, leases_->Release(req->token(), req->discard()));
  }

 private:
  LeaseTable* const leases_;
  const PeerLimits limits_;
  PeerBudget streams_;
  PeerBudget bytes_;
  absl::Mutex replacing_mu_;
  std::set<std::string> replacing_ ABSL_GUARDED_BY(replacing_mu_);
};

}  // namespace

std::unique_ptr<grpc::Service> MakeContentService(LeaseTable& leases,
                                                  const PeerLimits& limits) {
  return std::make_unique<ContentService>(&leases, limits);
}

}  // namespace sinkline::broker
