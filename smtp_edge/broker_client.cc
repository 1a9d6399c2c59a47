#include "smtp_edge/broker_client.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "sinkline/common/grpc_security.h"

namespace sinkline::edge {

namespace {

std::string& BrokerToken() {
  static std::string* token = new std::string;
  return *token;
}

}  // namespace

void SetBrokerToken(std::string token) { BrokerToken() = std::move(token); }

absl::Status LoadBrokerToken(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read --broker-token-file ", path));
  }
  std::ostringstream out;
  out << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(out.str()));
  if (token.size() < 16) {
    return absl::InvalidArgumentError(
        "--broker-token-file: the token must be at least 16 characters");
  }
  SetBrokerToken(std::move(token));
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> MakeBrokerChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(R"({"loadBalancingConfig":[{"round_robin":{}}]})");
  // A broker that comes back is found again within a second or so.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // gRPC reads this one as the least time a connection attempt is given
  // (TCP and HTTP/2 handshake). Short backoffs must not make it short too:
  // a broker that is slow to answer right after its restart (recovering its
  // spool on a busy machine) would never be reached.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // No retry filter on the session streams: a stream that fails is opened
  // again by the connection (until --broker-connect-timeout-ms) or ends the
  // session with 4xx, never replayed by gRPC. The filter's per-call state
  // was about 6 KB of an idle session's 35 KB (bench/README.md, scale.py).
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  sinkline::AddGrpcTlsChannelArgs(args);
  return grpc::CreateCustomChannel(target, sinkline::GrpcChannelCredentials(),
                                   args);
}

std::shared_ptr<BrokerStream> BrokerStream::Open(v1::SessionService::Stub* stub,
                                                 Handler handler) {
  std::shared_ptr<BrokerStream> s(new BrokerStream(std::move(handler)));
  s->self_ = s;
  // Fail fast when no broker is there: the client hears 421, never 250.
  s->context_.set_wait_for_ready(false);
  if (const std::string& token = BrokerToken(); !token.empty()) {
    s->context_.AddMetadata("authorization", "Bearer " + token);
  }
  stub->async()->Stream(&s->context_, s.get());
  // Send and Close start writes from the session's strand, outside the
  // reactions: without a hold, the call could end (and gRPC free it) between
  // a failure coming in and OnDone, and such a write would touch freed
  // memory. The hold ends when the session closes or cancels the stream, or
  // when the stream breaks (see ReleaseHold).
  s->AddHold();
  s->StartRead(&s->response_);
  s->StartCall();
  return s;
}

void BrokerStream::Send(v1::SessionRequest req) {
  absl::MutexLock lock(&mu_);
  if (closing_ || failed_ || released_) return;
  out_.push_back(std::move(req));
  if (!writing_) WriteNextLocked();
}

void BrokerStream::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    closing_ = true;
    if (!writing_ && !released_) WriteNextLocked();
  }
  // Any write still queued goes out from OnWriteDone, a reaction.
  ReleaseHold();
}

void BrokerStream::Cancel() {
  context_.TryCancel();
  ReleaseHold();
}

void BrokerStream::ReleaseHold() {
  {
    absl::MutexLock lock(&mu_);
    if (released_) return;
    released_ = true;  // no write starts from outside a reaction after this
  }
  RemoveHold();
}

size_t BrokerStream::queued() const {
  absl::MutexLock lock(&mu_);
  return out_.size();
}

void BrokerStream::WriteNextLocked() {
  if (failed_) return;
  if (!out_.empty()) {
    writing_ = true;
    StartWrite(&out_.front());
  } else if (closing_ && !writes_done_) {
    writes_done_ = true;
    writing_ = true;
    StartWritesDone();
  }
}

void BrokerStream::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!out_.empty()) out_.pop_front();
    if (!ok) {
      failed_ = true;
      out_.clear();
    } else {
      WriteNextLocked();
    }
  }
  if (!ok) ReleaseHold();  // broken: OnDone may come
  if (handler_.on_writable) handler_.on_writable();
}

void BrokerStream::OnWritesDoneDone(bool) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
}

void BrokerStream::OnReadDone(bool ok) {
  if (!ok) {
    // The broker ended the stream or it broke: writes would fail, so the
    // hold goes and OnDone follows with the status.
    {
      absl::MutexLock lock(&mu_);
      failed_ = true;  // a write in flight ends in OnWriteDone
    }
    ReleaseHold();
    return;
  }
  handler_.on_response(std::move(response_));
  response_.Clear();
  StartRead(&response_);
}

void BrokerStream::OnDone(const grpc::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    failed_ = true;
  }
  if (handler_.on_done) handler_.on_done(status);
  // Last: releasing the self-reference may delete this object.
  auto keep = std::move(self_);
}

}  // namespace sinkline::edge
