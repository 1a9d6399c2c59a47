#include "sink_broker/session_stream.h"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "sink_broker/ids.h"
#include "sink_broker/incoming.h"
#include "sink_broker/trace.h"
#include "sink_broker/verdict.h"
#include "sinkline/common/grpc_status.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;

namespace {

Counter& EventsCounter(v1::EventType type) {
  return MetricsRegistry::Default().GetCounter("sinkline_broker_events_total",
                                               "Events received from edges.",
                                               {{"event", EventName(type)}});
}

}  // namespace

class SessionReactor;

class SessionState : public std::enable_shared_from_this<SessionState> {
 public:
  explicit SessionState(const SessionEnv* env)
      : env_(env), strand_(asio::make_strand(*env->pool)) {}
  ~SessionState() { DiscardIncoming(); }

  Strand& strand() { return strand_; }

  // All below run on the strand.
  void Attach(SessionReactor* r) { reactor_ = r; }
  void OnMessage(v1::SessionRequest req);
  void OnReadEnd();
  void OnWriteDone(bool ok);
  void OnDone();
  void Send(v1::SessionResponse resp);

 private:
  void ReadNext();
  void OnData(const v1::DataChunk& chunk);
  void HandleEvent(const v1::SessionRequest& req);
  // EOD waits for an in-flight slot (in_flight.h), then CommitEod.
  void HandleEod(v1::Event event);
  void CommitEod(v1::Event event, InFlightLimit::Slot slot);
  void AnswerEod(const v1::Event& event, v1::Reply reply);
  // Opens the arriving message of transaction `tx` (its queue id, its trace
  // header, its entry for operators).
  void OpenIncoming(const std::string& tx);
  // Content of a transaction that did not reach COMMIT goes, and with it
  // whatever failed while storing it.
  void DiscardIncoming() {
    if (incoming_) env_->chain.messages->Forget(ReceivingKey());
    incoming_.reset();
    incoming_fd_.reset();
    incoming_tx_.clear();
    incoming_error_ = absl::OkStatus();
    no_descriptor_ = false;
  }
  v1::BindingMap CurrentBindingMap() const {
    return env_->binding_map ? env_->binding_map()
                             : env_->config()->MakeBindingMap();
  }
  std::string ReceivingKey() const {
    return absl::StrCat(session_id_, "-", incoming_tx_);
  }
  void MaybeFinish();
  // Ends the stream with `status` (a hostile or broken edge): no more reads.
  void Refuse(grpc::Status status);

  const SessionEnv* const env_;
  Strand strand_;
  SessionReactor* reactor_ = nullptr;
  std::deque<v1::SessionResponse> out_;
  bool writing_ = false;
  bool read_ended_ = false;
  bool finished_ = false;
  std::string session_id_;
  std::unique_ptr<IncomingMessage> incoming_;
  // The arriving file's place in the descriptor limit.
  MessageDescriptors::Hold incoming_fd_;
  // The transaction found the descriptor limit reached (451 4.3.2).
  bool no_descriptor_ = false;
  std::string incoming_tx_;
  // The queue id of the message that arrives: chosen when its content
  // starts (it is in the Received: header), given to the client at COMMIT.
  std::string incoming_qid_;
  v1::SessionInfo last_session_;
  v1::Envelope last_envelope_;
  absl::Status incoming_error_;
  grpc::Status finish_status_ = grpc::Status::OK;
};

class SessionReactor
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(const SessionEnv* env, std::shared_ptr<void> admitted)
      : state_(std::make_shared<SessionState>(env)),
        env_(env),
        admitted_(std::move(admitted)) {
    auto state = state_;
    env_->hub->Register(state);
    asio::post(state->strand(), [state, this] {
      state->Attach(this);
      StartRead(&request_);
    });
  }

  void OnReadDone(bool ok) override {
    auto state = state_;
    if (!ok) {
      asio::post(state->strand(), [state] { state->OnReadEnd(); });
      return;
    }
    asio::post(state->strand(), [state, req = std::move(request_)]() mutable {
      state->OnMessage(std::move(req));
    });
  }
  void ReadNext() { StartRead(&request_); }
  void OnWriteDone(bool ok) override {
    auto state = state_;
    asio::post(state->strand(), [state, ok] { state->OnWriteDone(ok); });
  }
  void OnDone() override {
    auto state = state_;
    env_->hub->Unregister(state.get());
    asio::post(state->strand(), [state, this] {
      state->OnDone();
      delete this;
    });
  }

 private:
  std::shared_ptr<SessionState> state_;
  const SessionEnv* const env_;
  // The stream's place in the per-edge limit, until it is done.
  const std::shared_ptr<void> admitted_;
  v1::SessionRequest request_;
};

namespace {

// A stream refused at once (the broker is not ready for sessions yet, or
// the caller is not an edge), before any event is read.
class RefusedStream
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  explicit RefusedStream(grpc::Status why) { Finish(why); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>*
SessionService::Stream(grpc::CallbackServerContext* context) {
  if (!accepting_.load()) {
    return new RefusedStream(
        grpc::Status(grpc::StatusCode::UNAVAILABLE,
                     "the broker is recovering its spool; try again"));
  }
  auto admitted = env_->gate ? env_->gate->Admit(*context)
                             : absl::StatusOr<std::shared_ptr<void>>(nullptr);
  if (!admitted.ok()) return new RefusedStream(ToGrpc(admitted.status()));
  return new SessionReactor(env_, std::move(*admitted));
}

void SessionHub::Register(const std::shared_ptr<SessionState>& s) {
  absl::MutexLock lock(&mu_);
  sessions_[s.get()] = s;
}

void SessionHub::Unregister(SessionState* s) {
  absl::MutexLock lock(&mu_);
  sessions_.erase(s);
}

size_t SessionHub::Broadcast(const v1::BindingMap& map) {
  std::vector<std::shared_ptr<SessionState>> live;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [raw, weak] : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) {
    asio::post(s->strand(), [s, map] {
      v1::SessionResponse resp;
      *resp.mutable_binding_map() = map;
      s->Send(std::move(resp));
    });
  }
  return live.size();
}

void SessionState::ReadNext() {
  if (reactor_ && !read_ended_) reactor_->ReadNext();
}

void SessionState::Send(v1::SessionResponse resp) {
  if (!reactor_ || finished_) return;
  out_.push_back(std::move(resp));
  if (!writing_) {
    writing_ = true;
    reactor_->StartWrite(&out_.front());
  }
}

void SessionState::OnWriteDone(bool ok) {
  writing_ = false;
  if (!out_.empty()) out_.pop_front();
  if (!ok) {
    // The edge went away; reads end too (perhaps they already did, and
    // waited for this write: the stream finishes now).
    out_.clear();
    MaybeFinish();
    return;
  }
  if (!out_.empty() && reactor_ && !finished_) {
    writing_ = true;
    reactor_->StartWrite(&out_.front());
    return;
  }
  MaybeFinish();
}

void SessionState::OnReadEnd() {
  read_ended_ = true;
  DiscardIncoming();
  MaybeFinish();
}

void SessionState::MaybeFinish() {
  if (read_ended_ && !writing_ && !finished_ && reactor_) {
    finished_ = true;
    reactor_->Finish(finish_status_);
  }
}

void SessionState::Refuse(grpc::Status status) {
  spdlog::warn("session stream refused: {}", status.error_message());
  finish_status_ = std::move(status);
  read_ended_ = true;  // no read is outstanding while a message is handled
  DiscardIncoming();
  MaybeFinish();
}

void SessionState::OnDone() {
  reactor_ = nullptr;
  DiscardIncoming();
}

namespace {

// Ids on the wire, checked before anything uses them.
grpc::Status CheckIds(const v1::SessionRequest& req) {
  auto bad = [](const char* what) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat(what, " must be 1 to 64 of [A-Za-z0-9._-]"));
  };
  switch (req.kind_case()) {
    case v1::SessionRequest::kStart:
      if (!ValidWireId(req.start().session().session_id())) {
        return bad("session_id");
      }
      break;
    case v1::SessionRequest::kData:
      if (!ValidWireId(req.data().transaction_id())) {
        return bad("transaction_id");
      }
      break;
    case v1::SessionRequest::kEvent: {
      const auto& e = req.event();
      if (!e.session().session_id().empty() &&
          !ValidWireId(e.session().session_id())) {
        return bad("session_id");
      }
      if (!e.transaction_id().empty() && !ValidWireId(e.transaction_id())) {
        return bad("transaction_id");
      }
      break;
    }
    default:
      break;
  }
  return grpc::Status::OK;
}

}  // namespace

void SessionState::OnMessage(v1::SessionRequest req) {
  if (auto st = CheckIds(req); !st.ok()) return Refuse(std::move(st));
  switch (req.kind_case()) {
    case v1::SessionRequest::kStart: {
      session_id_ = req.start().session().session_id();
      spdlog::debug("session {} from {}", session_id_,
                    req.start().session().client().ip());
      v1::SessionResponse resp;
      *resp.mutable_binding_map() = CurrentBindingMap();
      Send(std::move(resp));
      return ReadNext();
    }
    case v1::SessionRequest::kData:
      OnData(req.data());
      return ReadNext();
    case v1::SessionRequest::kEvent:
      return HandleEvent(req);
    default:
      return ReadNext();
  }
}

void SessionState::OpenIncoming(const std::string& tx) {
  DiscardIncoming();
  incoming_error_ = absl::OkStatus();
  incoming_tx_ = tx;
  // The broker's own id names the file, never what the edge sent.
  incoming_qid_ = NewQueueId();
  // Nothing is stored while the spool is low on space, or while the broker
  // holds its limit of descriptors for messages.
  if (env_->space != nullptr && env_->space->Check()) {
    SpoolSpace::CountRefusal("data");
    incoming_error_ = absl::ResourceExhaustedError(
        "the spool's free space is below --spool-min-free-bytes");
    return;
  }
  if (env_->descriptors != nullptr) {
    incoming_fd_ = env_->descriptors->TryAcquire();
    if (!incoming_fd_) {
      no_descriptor_ = true;
      incoming_error_ = absl::UnavailableError(
          absl::StrCat(env_->descriptors->in_use(),
                       " descriptors held for messages, the limit "
                       "(--max-message-descriptors)"));
      return;
    }
  }
  auto m = IncomingMessage::Create(env_->commit.spool->dir(), incoming_qid_);
  if (!m.ok()) {
    incoming_error_ = m.status();
    return;
  }
  incoming_ = std::move(*m);
  if (env_->received_header) {
    incoming_error_ = incoming_->Append(ReceivedHeader(
        last_session_, last_envelope_, incoming_qid_, absl::Now()));
  }
  env_->chain.messages->Track(ReceivingKey(), v1::MESSAGE_STATE_RECEIVING,
                              v1::Envelope(), 0,
                              absl::StrCat("receiving in session ", session_id_,
                                           ", transaction ", incoming_tx_));
}

void SessionState::OnData(const v1::DataChunk& chunk) {
  // A transaction is opened once, by its first chunk. Should storing fail
  // (open, write), the error stays with the transaction: later chunks are
  // not stored either and EOD answers 451, never a shorter message.
  if (incoming_tx_ != chunk.transaction_id()) {
    OpenIncoming(chunk.transaction_id());
  }
  if (!incoming_error_.ok()) return;
  if (!incoming_) {
    incoming_error_ = absl::InternalError("no spool file for the content");
    return;
  }
  incoming_error_ = incoming_->Append(chunk.data());
}

void SessionState::HandleEvent(const v1::SessionRequest& req) {
  const v1::Event& event = req.event();
  last_session_ = event.session();
  last_envelope_ = event.envelope();
  EventsCounter(event.type()).Inc();
  switch (event.type()) {
    case v1::EVENT_TYPE_MAIL:
    case v1::EVENT_TYPE_RSET:
    case v1::EVENT_TYPE_QUIT:
    case v1::EVENT_TYPE_DISCONNECT:
    case v1::EVENT_TYPE_HELO:
    case v1::EVENT_TYPE_EHLO:
      DiscardIncoming();
      break;
    default:
      break;
  }
  if (req.notify_only()) return ReadNext();
  if (event.type() == v1::EVENT_TYPE_EOD) return HandleEod(event);
  if (event.type() == v1::EVENT_TYPE_MAIL && env_->space != nullptr &&
      env_->space->Check()) {
    // Before the client sends a body (Postfix's queue_minfree).
    SpoolSpace::CountRefusal("mail");
    v1::SessionResponse resp;
    resp.mutable_result()->set_sequence(event.sequence());
    *resp.mutable_result()->mutable_reply() = MakeReply(
        452, "4.3.1", "Error: insufficient system storage, try again later");
    Send(std::move(resp));
    return ReadNext();
  }

  auto run =
      std::make_shared<ChainRun>(env_->chain, strand_, env_->config(), event);
  auto self = shared_from_this();
  run->Run(
      /*native=*/nullptr, /*after_native=*/nullptr, [self](ChainRun& r) {
        v1::SessionResponse resp;
        auto* result = resp.mutable_result();
        result->set_sequence(r.event().sequence());
        *result->mutable_reply() = r.reply();
        result->set_close_session(r.close_session());
        if (r.envelope_changed()) *result->mutable_envelope() = r.envelope();
        self->Send(std::move(resp));
        self->ReadNext();
      });
}

void SessionState::HandleEod(v1::Event event) {
  if (env_->in_flight == nullptr) return CommitEod(std::move(event), nullptr);
  auto self = shared_from_this();
  env_->in_flight->Acquire(
      strand_, [self, event](InFlightLimit::Slot slot) mutable {
        // The session may have ended while the EOD waited.
        if (!self->reactor_ || self->finished_ || self->read_ended_) return;
        if (slot) return self->CommitEod(std::move(event), std::move(slot));
        spdlog::warn(
            "session {} transaction {}: {} messages in flight, the limit; "
            "answering 451 4.3.2",
            self->session_id_, event.transaction_id(),
            self->env_->in_flight->in_flight());
        self->AnswerEod(
            event, MakeReply(451, "4.3.2",
                             "Error: too many messages in flight, try again "
                             "later"));
      });
}

void SessionState::AnswerEod(const v1::Event& event, v1::Reply reply) {
  v1::SessionResponse resp;
  resp.mutable_result()->set_sequence(event.sequence());
  *resp.mutable_result()->mutable_reply() = std::move(reply);
  DiscardIncoming();
  incoming_tx_.clear();
  Send(std::move(resp));
  ReadNext();
}

void SessionState::CommitEod(v1::Event event, InFlightLimit::Slot slot) {
  auto self = shared_from_this();
  if (incoming_tx_ != event.transaction_id()) {
    // No content arrived (an empty message): spool an empty file.
    OpenIncoming(event.transaction_id());
  }
  if (incoming_error_.ok() && !incoming_) {
    incoming_error_ = absl::InternalError("no spool file for the content");
  }
  if (no_descriptor_) {
    spdlog::warn("session {} transaction {}: {}; answering 451 4.3.2",
                 session_id_, event.transaction_id(),
                 std::string(incoming_error_.message()));
    return AnswerEod(event, MakeReply(451, "4.3.2",
                                      "Error: too many messages open in the "
                                      "broker, try again later"));
  }
  if (!incoming_error_.ok()) {
    spdlog::error(
        "session {} transaction {}: content could not be stored, answering "
        "4xx: {}",
        session_id_, event.transaction_id(), incoming_error_.ToString());
    MetricsRegistry::Default()
        .GetCounter("sinkline_broker_spool_write_errors_total",
                    "Transactions answered 451 because their content could "
                    "not be stored.")
        .Inc();
    return AnswerEod(event, StoreFailureReply(incoming_error_));
  }

  // The message now belongs to this run, which outlives the session.
  std::shared_ptr<IncomingMessage> message = std::move(incoming_);
  // COMMIT closes the arriving file: its descriptor counts until then.
  auto fd_hold =
      std::make_shared<MessageDescriptors::Hold>(std::move(incoming_fd_));
  auto run = std::make_shared<ChainRun>(env_->chain, strand_, env_->config(),
                                        std::move(event));
  auto committed = std::make_shared<v1::QueueEntry>();
  // Edits are published by leases (commit.h).
  auto holder = std::make_shared<std::weak_ptr<MessageRecord>>();
  auto record = std::make_shared<MessageRecord>(message->path(),
                                                ArrivingEdits(message, holder));
  *holder = record;
  record->set_envelope(run->event().envelope());
  run->message = record;

  const SessionEnv* env = env_;
  auto native = [env, message, committed, record, fd_hold,
                 qid = incoming_qid_](ChainRun& r) {
    const NativeResult result =
        CommitMessage(env->commit, qid, *message, *record, r, *committed);
    fd_hold->reset();
    return result;
  };
  // The client gets its reply as soon as COMMIT (or a refusal) settled it;
  // sinks after COMMIT run after that.
  auto after_native = [self](ChainRun& r) {
    v1::SessionResponse resp;
    auto* result = resp.mutable_result();
    result->set_sequence(r.event().sequence());
    *result->mutable_reply() = r.reply();
    result->set_close_session(r.close_session());
    result->set_queue_id(r.event().queue_id());
    self->Send(std::move(resp));
    self->ReadNext();
  };
  run->Run(native, after_native,
           [env, committed, record, message, key = ReceivingKey(),
            qid = incoming_qid_, slot = std::move(slot)](ChainRun& r) mutable {
             if (committed->queue_id().empty()) {  // refused before COMMIT
               slot.reset();
               env->chain.messages->Forget(key);
               if (!r.discarded_by().empty()) {
                 // A deliberate discard stays visible to operators.
                 const std::string why = "discarded by binding " +
                                         r.discarded_by() +
                                         " at EOD before COMMIT";
                 env->chain.messages->Track(qid, v1::MESSAGE_STATE_DELETED,
                                            record->envelope(), message->size(),
                                            why);
                 env->chain.messages->SetState(qid, v1::MESSAGE_STATE_DELETED,
                                               why, why);
               }
               return;
             }
             env->submitter->ChainOver(committed, record, r.quarantine_reason(),
                                       std::move(slot));
           });
  // The transaction is over; the next one opens its own file.
  incoming_tx_.clear();
}

}  // namespace sinkline::broker
