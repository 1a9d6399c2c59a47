#include "broker.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "message_edit.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using Strand = asio::strand<asio::thread_pool::executor_type>;
using google::protobuf::util::TimeUtil;

namespace {

v1::Reply MakeReply(uint32_t code, const std::string& enhanced,
                    const std::string& text) {
  v1::Reply r;
  r.set_code(code);
  r.set_enhanced_code(enhanced);
  r.add_lines(text);
  return r;
}

Counter& EventsCounter(v1::EventType type) {
  return MetricsRegistry::Default().GetCounter("sinkline_broker_events_total",
                                               "Events received from edges.",
                                               {{"event", EventName(type)}});
}

Counter& MessagesCounter(const std::string& what) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_messages_total",
      "Messages by what happened to them (committed, submitted, "
      "quarantined).",
      {{"what", what}});
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

// ---------------------------------------------------------------------------
// Validation.

absl::Status ValidateReply(const v1::Reply& reply) {
  const uint32_t code = reply.code();
  const uint32_t cls = code / 100;
  if (code < 200 || code > 599 || cls == 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("reply code ", code, " is not 2xx, 4xx or 5xx"));
  }
  const std::string& enh = reply.enhanced_code();
  // class.subject.detail: 1 digit, 1-3 digits, 1-3 digits.
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = enh.find('.', start);
    parts.push_back(enh.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  bool ok = parts.size() == 3 && parts[0].size() == 1 &&
            parts[0][0] == static_cast<char>('0' + cls);
  for (size_t i = 1; ok && i < 3; ++i) {
    ok = !parts[i].empty() && parts[i].size() <= 3 &&
         std::all_of(parts[i].begin(), parts[i].end(), absl::ascii_isdigit);
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("enhanced status code '", absl::CEscape(enh),
                     "' does not fit reply ", code));
  }
  if (reply.lines_size() == 0) {
    return absl::InvalidArgumentError("reply without text");
  }
  for (const auto& line : reply.lines()) {
    if (line.find_first_of("\r\n") != std::string::npos) {
      return absl::InvalidArgumentError("reply text contains CR or LF");
    }
    if (line.size() > 500) {
      return absl::InvalidArgumentError("reply line longer than 500 octets");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateVerdict(const v1::Event& event, const v1::Binding& binding,
                             bool after_commit, const v1::Verdict& verdict) {
  if (verdict.action() != v1::ACTION_CONTINUE &&
      verdict.action() != v1::ACTION_CONSUME) {
    return absl::InvalidArgumentError("verdict has no action");
  }
  const bool has_reply = verdict.has_reply() && verdict.reply().code() != 0;
  if (verdict.action() == v1::ACTION_CONSUME && !has_reply && !after_commit) {
    return absl::InvalidArgumentError("CONSUME without a reply");
  }
  if (has_reply) {
    if (auto st = ValidateReply(verdict.reply()); !st.ok()) return st;
  }
  if (verdict.drop_session() && has_reply && verdict.reply().code() != 421) {
    return absl::InvalidArgumentError("drop_session needs a 421 reply");
  }
  const bool writer = binding.content_access() == v1::CONTENT_ACCESS_READ_WRITE;
  if (verdict.content_edits_size() > 0) {
    if (!writer) {
      return absl::PermissionDeniedError(
          "content edits need content_access read-write");
    }
    if (event.type() != v1::EVENT_TYPE_EOD) {
      return absl::InvalidArgumentError("content edits are only for EOD");
    }
    for (const auto& e : verdict.content_edits()) {
      if (auto st = ValidateEdit(e); !st.ok()) return st;
    }
  }
  if (verdict.envelope_edits_size() > 0) {
    if (!writer) {
      return absl::PermissionDeniedError(
          "envelope edits need content_access read-write");
    }
    for (const auto& e : verdict.envelope_edits()) {
      std::string addr;
      switch (e.edit_case()) {
        case v1::EnvelopeEdit::kSetSender:
          addr = e.set_sender();
          break;
        case v1::EnvelopeEdit::kAddRecipient:
          addr = e.add_recipient().address();
          if (addr.empty()) {
            return absl::InvalidArgumentError("empty recipient");
          }
          break;
        case v1::EnvelopeEdit::kRemoveRecipient:
          addr = e.remove_recipient();
          break;
        default:
          return absl::InvalidArgumentError("empty envelope edit");
      }
      if (addr.find_first_of("\r\n <>\t") != std::string::npos ||
          addr.size() > 256) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad address '", absl::CEscape(addr), "'"));
      }
    }
  }
  return absl::OkStatus();
}

bool ApplyEnvelopeEdits(
    const google::protobuf::RepeatedPtrField<v1::EnvelopeEdit>& edits,
    v1::Envelope& env) {
  bool changed = false;
  for (const auto& e : edits) {
    switch (e.edit_case()) {
      case v1::EnvelopeEdit::kSetSender:
        env.set_mail_from(e.set_sender());
        changed = true;
        break;
      case v1::EnvelopeEdit::kAddRecipient: {
        bool present = false;
        for (const auto& r : env.recipients()) {
          present |=
              absl::EqualsIgnoreCase(r.address(), e.add_recipient().address());
        }
        if (!present) {
          *env.add_recipients() = e.add_recipient();
          changed = true;
        }
        break;
      }
      case v1::EnvelopeEdit::kRemoveRecipient: {
        auto* rcpts = env.mutable_recipients();
        for (int i = 0; i < rcpts->size(); ++i) {
          if (absl::EqualsIgnoreCase(rcpts->Get(i).address(),
                                     e.remove_recipient())) {
            rcpts->DeleteSubrange(i, 1);
            changed = true;
            break;
          }
        }
        break;
      }
      default:
        break;
    }
  }
  return changed;
}

// ---------------------------------------------------------------------------
// Sink channels.

std::shared_ptr<v1::Sink::Stub> SinkChannels::Stub(const std::string& target) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[target];
  if (!stub) {
    grpc::ChannelArguments args;
    // Spread calls over every address the target resolves to.
    args.SetServiceConfigJSON(
        R"({"loadBalancingConfig":[{"round_robin":{}}]})");
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
    // A sink that restarts is found again quickly.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    stub = v1::Sink::NewStub(grpc::CreateCustomChannel(
        target, grpc::InsecureChannelCredentials(), args));
  }
  return stub;
}

// ---------------------------------------------------------------------------
// A chain run: one event through its bindings and the native handler.

// What the native handler did.
enum class NativeResult { kReply, kStop };

class ChainRun : public std::enable_shared_from_this<ChainRun> {
 public:
  using Done = std::function<void(ChainRun&)>;

  ChainRun(Broker* broker, Strand strand, std::shared_ptr<const Config> config,
           v1::Event event)
      : broker_(broker),
        strand_(std::move(strand)),
        config_(std::move(config)),
        event_(std::move(event)) {
    for (const auto* b : config_->ChainFor(event_)) {
      if (!b->rule.Matches(event_)) continue;
      (b->spec.priority() <= kNativePriority ? pre_ : post_).push_back(b);
    }
    reply_ = event_.native_reply();
    envelope_ = event_.envelope();
  }

  // For EOD: where the content is, so sinks get leases and inline content
  // and content edits can be applied.
  std::function<std::string()> content_path;
  std::function<absl::Status(const std::vector<v1::ContentEdit>&)>
      apply_content_edits;

  // Runs the bindings before the native handler, then `native`, then
  // `after_native` with the result so far (the reply goes out there for
  // EOD), then the bindings after it, then `done`.
  void Run(std::function<NativeResult(ChainRun&)> native,
           std::function<void(ChainRun&)> after_native, Done done) {
    native_ = std::move(native);
    after_native_ = std::move(after_native);
    done_ = std::move(done);
    Step();
  }

  const v1::Event& event() const { return event_; }
  v1::Event& mutable_event() { return event_; }
  const v1::Reply& reply() const { return reply_; }
  void set_reply(v1::Reply r) { reply_ = std::move(r); }
  bool close_session() const { return close_; }
  bool consumed() const { return consumed_; }
  bool sink_replied() const { return sink_replied_; }
  const v1::Envelope& envelope() const { return envelope_; }
  bool envelope_changed() const { return envelope_changed_; }
  bool after_commit() const { return phase_ == Phase::kPost; }
  // Post-commit: why the message must be held, if a sink said so.
  const std::string& quarantine_reason() const { return quarantine_; }

 private:
  enum class Phase { kPre, kNative, kPost, kDone };

  void Step() {
    if (phase_ == Phase::kPre) {
      if (stopped_ || index_ >= pre_.size()) {
        phase_ = Phase::kNative;
        index_ = 0;
      } else {
        return Invoke(pre_[index_++]);
      }
    }
    if (phase_ == Phase::kNative) {
      bool stop = stopped_;
      if (!stopped_ && native_) stop = native_(*this) == NativeResult::kStop;
      if (after_native_) after_native_(*this);
      phase_ = Phase::kPost;
      if (stop) stopped_ = true;
    }
    if (phase_ == Phase::kPost) {
      if (!stopped_ && index_ < post_.size()) return Invoke(post_[index_++]);
      phase_ = Phase::kDone;
      if (done_) done_(*this);
    }
  }

  void Invoke(const BindingConfig* b) {
    const v1::Binding& spec = b->spec;
    const SinkConfig* sink = config_->FindSink(spec.sink());
    auto call = std::make_shared<Call>();
    call->binding = b;
    call->started = std::chrono::steady_clock::now();
    v1::SinkRequest& req = call->request;
    *req.mutable_event() = event_;
    *req.mutable_event()->mutable_envelope() = envelope_;
    req.set_binding(spec.name());
    req.set_priority(spec.priority());
    req.set_after_commit(phase_ == Phase::kPost);
    if (spec.content_access() != v1::CONTENT_ACCESS_NONE &&
        event_.type() == v1::EVENT_TYPE_EOD && content_path) {
      const auto now = std::chrono::system_clock::now();
      const auto deadline = std::chrono::milliseconds(spec.deadline_ms());
      v1::Lease* lease = req.mutable_lease();
      lease->set_token(NewToken());
      *lease->mutable_expires() = TimeUtil::MillisecondsToTimestamp(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              (now + deadline).time_since_epoch())
              .count());
      *lease->mutable_max_expires() = lease->expires();
      lease->set_access(spec.content_access());
      lease->set_content_endpoint(broker_->options().advertise);
      const std::string path = content_path();
      std::error_code ec;
      const auto size = fs::file_size(path, ec);
      if (!ec && size <= broker_->options().inline_max_bytes) {
        req.set_inline_content(ReadFileBytes(path));
        req.set_content_inline(true);
      }
    }
    auto deadline = std::chrono::milliseconds(spec.deadline_ms());
    if (phase_ != Phase::kPost || event_.type() != v1::EVENT_TYPE_EOD) {
      // Before the client's reply the whole chain has a budget.
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          chain_started_ + broker_->options().chain_deadline -
          std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return Finished(call, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                           "the chain's deadline is spent"));
      }
      deadline = std::min(deadline, left);
    }
    call->context.set_deadline(std::chrono::system_clock::now() + deadline);
    if (sink == nullptr) {
      return Finished(call, grpc::Status(grpc::StatusCode::NOT_FOUND,
                                         "no such sink " + spec.sink()));
    }
    auto stub = broker_->channels().Stub(sink->target);
    auto self = shared_from_this();
    stub->async()->OnEvent(&call->context, &call->request, &call->verdict,
                           [self, call](grpc::Status status) {
                             asio::post(self->strand_, [self, call, status] {
                               self->Finished(call, status);
                             });
                           });
  }

  struct Call {
    const BindingConfig* binding = nullptr;
    grpc::ClientContext context;
    v1::SinkRequest request;
    v1::Verdict verdict;
    std::chrono::steady_clock::time_point started;
  };

  void Finished(const std::shared_ptr<Call>& call, const grpc::Status& status) {
    const v1::Binding& spec = call->binding->spec;
    MetricsRegistry::Default()
        .GetHistogram("sinkline_sink_call_seconds",
                      "Time of each sink call, by binding.",
                      {{"binding", spec.name()}})
        .Observe(std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - call->started)
                     .count());
    if (!status.ok()) {
      Failure(spec, absl::StrCat(
                        "call failed: ", grpc::StatusCode(status.error_code()),
                        " ", status.error_message()));
      return Step();
    }
    const bool post = phase_ == Phase::kPost;
    if (auto st = ValidateVerdict(event_, spec, post, call->verdict);
        !st.ok()) {
      Failure(spec, absl::StrCat("invalid verdict: ", st.message()));
      return Step();
    }
    const v1::Verdict& v = call->verdict;
    if (v.hold_lease()) {
      spdlog::info(
          "binding={} asked to hold its lease; leases end with the verdict "
          "until the content service serves them",
          spec.name());
    }
    if (v.content_edits_size() > 0 && apply_content_edits) {
      std::vector<v1::ContentEdit> edits(v.content_edits().begin(),
                                         v.content_edits().end());
      if (auto st = apply_content_edits(edits); !st.ok()) {
        Failure(spec, absl::StrCat("content edits failed: ", st.message()));
        return Step();
      }
    }
    if (ApplyEnvelopeEdits(v.envelope_edits(), envelope_)) {
      envelope_changed_ = true;
    }
    const bool has_reply = v.has_reply() && v.reply().code() != 0;
    spdlog::debug("binding={} sink={} event={} action={}", spec.name(),
                  spec.sink(), EventName(event_.type()),
                  v1::Action_Name(v.action()));
    if (post) {
      // The client has its reply: a refusal holds the message instead.
      if (v.action() == v1::ACTION_CONSUME) {
        stopped_ = true;
        if (has_reply && v.reply().code() >= 400) {
          quarantine_ = absl::StrCat("binding ", spec.name(), " answered ",
                                     v.reply().code(), " after COMMIT");
        }
      }
      return Step();
    }
    if (has_reply) {
      reply_ = v.reply();
      sink_replied_ = true;
    }
    if (v.drop_session()) {
      close_ = true;
      if (!has_reply) reply_ = MakeReply(421, "4.7.0", "Closing connection");
    }
    if (v.action() == v1::ACTION_CONSUME) {
      consumed_ = true;
      stopped_ = true;
    }
    Step();
  }

  void Failure(const v1::Binding& spec, const std::string& why) {
    const auto policy = spec.failure_policy();
    std::string policy_name = "continue";
    if (policy == v1::FAILURE_POLICY_TEMPFAIL) policy_name = "tempfail";
    if (policy == v1::FAILURE_POLICY_REJECT) policy_name = "reject";
    MetricsRegistry::Default()
        .GetCounter("sinkline_sink_failures_total",
                    "Sink calls that failed, by binding and policy.",
                    {{"binding", spec.name()},
                     {"sink", spec.sink()},
                     {"policy", policy_name}})
        .Inc();
    spdlog::warn("sink failure: binding={} sink={} event={} policy={}: {}",
                 spec.name(), spec.sink(), EventName(event_.type()),
                 policy_name, why);
    if (policy == v1::FAILURE_POLICY_CONTINUE) return;
    if (phase_ == Phase::kPost) {
      stopped_ = true;
      quarantine_ = absl::StrCat("binding ", spec.name(),
                                 " failed after "
                                 "COMMIT (",
                                 policy_name, "): ", why);
      return;
    }
    reply_ = policy == v1::FAILURE_POLICY_TEMPFAIL
                 ? MakeReply(451, "4.3.0",
                             "Temporary failure in message processing, try "
                             "again later")
                 : MakeReply(554, "5.7.0", "Rejected by policy");
    sink_replied_ = true;
    consumed_ = true;
    stopped_ = true;
  }

  Broker* const broker_;
  Strand strand_;
  const std::shared_ptr<const Config> config_;
  v1::Event event_;
  std::vector<const BindingConfig*> pre_, post_;
  Phase phase_ = Phase::kPre;
  const std::chrono::steady_clock::time_point chain_started_ =
      std::chrono::steady_clock::now();
  size_t index_ = 0;
  bool stopped_ = false;
  bool consumed_ = false;
  bool sink_replied_ = false;
  bool close_ = false;
  v1::Reply reply_;
  v1::Envelope envelope_;
  bool envelope_changed_ = false;
  std::string quarantine_;
  std::function<NativeResult(ChainRun&)> native_;
  std::function<void(ChainRun&)> after_native_;
  Done done_;
};

// ---------------------------------------------------------------------------
// Submission of a committed message, retried while the backend fails.

class Submission : public std::enable_shared_from_this<Submission> {
 public:
  Submission(Broker* broker, v1::QueueEntry entry)
      : broker_(broker), entry_(std::move(entry)), timer_(broker->pool()) {}

  void Start() {
    const std::string content =
        CommittedContentPath(broker_->options().spool_dir, entry_.queue_id());
    const std::string env =
        CommittedEnvelopePath(broker_->options().spool_dir, entry_.queue_id());
    absl::Status st = broker_->queue().Submit(entry_, content);
    if (st.ok()) {
      ::unlink(env.c_str());
      ::unlink(content.c_str());
      MessagesCounter("submitted").Inc();
      spdlog::info("submitted queue_id={} recipients={} size={}",
                   entry_.queue_id(), entry_.envelope().recipients_size(),
                   entry_.size());
      return;
    }
    delay_ = std::min(delay_ * 2, std::chrono::seconds(60));
    spdlog::error("submission of queue_id={} failed, retry in {}s: {}",
                  entry_.queue_id(), delay_.count(), st.ToString());
    timer_.expires_after(delay_);
    auto self = shared_from_this();
    timer_.async_wait([self](const boost::system::error_code& ec) {
      if (!ec) self->Start();
    });
  }

 private:
  Broker* const broker_;
  v1::QueueEntry entry_;
  asio::steady_timer timer_;
  std::chrono::seconds delay_{1};
};

// ---------------------------------------------------------------------------
// One edge session stream.

class SessionReactor;

class SessionState : public std::enable_shared_from_this<SessionState> {
 public:
  SessionState(Broker* broker)
      : broker_(broker), strand_(asio::make_strand(broker->pool())) {}

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
  void HandleEvent(const v1::SessionRequest& req);
  void HandleEod(v1::Event event);
  void DiscardIncoming() { incoming_.reset(); }
  void MaybeFinish();

  Broker* const broker_;
  Strand strand_;
  SessionReactor* reactor_ = nullptr;
  std::deque<v1::SessionResponse> out_;
  bool writing_ = false;
  bool read_ended_ = false;
  bool finished_ = false;
  std::string session_id_;
  std::unique_ptr<IncomingMessage> incoming_;
  std::string incoming_tx_;
  absl::Status incoming_error_;
};

class SessionReactor
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(Broker* broker)
      : state_(std::make_shared<SessionState>(broker)), broker_(broker) {
    auto state = state_;
    broker_->Register(state);
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
    broker_->Unregister(state.get());
    asio::post(state->strand(), [state, this] {
      state->OnDone();
      delete this;
    });
  }

 private:
  std::shared_ptr<SessionState> state_;
  Broker* const broker_;
  v1::SessionRequest request_;
};

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
    // The edge went away; reads will end too.
    out_.clear();
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
    reactor_->Finish(grpc::Status::OK);
  }
}

void SessionState::OnDone() {
  reactor_ = nullptr;
  DiscardIncoming();
}

void SessionState::OnMessage(v1::SessionRequest req) {
  switch (req.kind_case()) {
    case v1::SessionRequest::kStart: {
      session_id_ = req.start().session().session_id();
      spdlog::debug("session {} from {}", session_id_,
                    req.start().session().client().ip());
      v1::SessionResponse resp;
      *resp.mutable_binding_map() = broker_->config()->MakeBindingMap();
      Send(std::move(resp));
      return ReadNext();
    }
    case v1::SessionRequest::kData: {
      const auto& chunk = req.data();
      if (!incoming_ || incoming_tx_ != chunk.transaction_id()) {
        incoming_.reset();
        incoming_error_ = absl::OkStatus();
        incoming_tx_ = chunk.transaction_id();
        auto m = IncomingMessage::Create(
            broker_->options().spool_dir,
            absl::StrCat(session_id_, "-", chunk.transaction_id()));
        if (m.ok()) {
          incoming_ = std::move(*m);
        } else {
          incoming_error_ = m.status();
        }
      }
      if (incoming_ && incoming_error_.ok()) {
        incoming_error_ = incoming_->Append(chunk.data());
      }
      return ReadNext();
    }
    case v1::SessionRequest::kEvent:
      return HandleEvent(req);
    default:
      return ReadNext();
  }
}

void SessionState::HandleEvent(const v1::SessionRequest& req) {
  const v1::Event& event = req.event();
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

  auto run =
      std::make_shared<ChainRun>(broker_, strand_, broker_->config(), event);
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
  auto self = shared_from_this();
  if (!incoming_ || incoming_tx_ != event.transaction_id()) {
    // No content arrived (an empty message): spool an empty file.
    incoming_.reset();
    incoming_tx_ = event.transaction_id();
    auto m = IncomingMessage::Create(
        broker_->options().spool_dir,
        absl::StrCat(session_id_, "-", event.transaction_id()));
    if (m.ok()) {
      incoming_ = std::move(*m);
      incoming_error_ = absl::OkStatus();
    } else {
      incoming_error_ = m.status();
    }
  }
  if (!incoming_error_.ok()) {
    spdlog::error("session {}: spool failed: {}", session_id_,
                  incoming_error_.ToString());
    v1::SessionResponse resp;
    resp.mutable_result()->set_sequence(event.sequence());
    *resp.mutable_result()->mutable_reply() = MakeReply(
        451, "4.3.0", "Error: queue file write error, try again later");
    DiscardIncoming();
    Send(std::move(resp));
    return ReadNext();
  }

  // The message now belongs to this run, which outlives the session.
  std::shared_ptr<IncomingMessage> message = std::move(incoming_);
  auto run = std::make_shared<ChainRun>(broker_, strand_, broker_->config(),
                                        std::move(event));
  auto committed = std::make_shared<v1::QueueEntry>();
  Broker* broker = broker_;
  run->content_path = [message, committed, broker]() {
    return committed->queue_id().empty()
               ? message->path()
               : CommittedContentPath(broker->options().spool_dir,
                                      committed->queue_id());
  };
  run->apply_content_edits =
      [message, committed,
       broker](const std::vector<v1::ContentEdit>& edits) -> absl::Status {
    if (committed->queue_id().empty()) {
      const std::string tmp = message->path() + ".edit";
      auto size = RewriteMessage(message->path(), tmp, edits);
      if (!size.ok()) return size.status();
      return message->ReplaceWith(tmp, *size);
    }
    // After COMMIT: a new version, fsynced, then renamed over the old one.
    const std::string path = CommittedContentPath(broker->options().spool_dir,
                                                  committed->queue_id());
    const std::string tmp = path + ".edit";
    auto size = RewriteMessage(path, tmp, edits);
    if (!size.ok()) return size.status();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::UnavailableError("rename of the new version failed");
    }
    committed->set_size(*size);
    return FsyncPath(fs::path(path).parent_path().string());
  };

  auto native = [message, committed, broker, self](ChainRun& r) {
    // COMMIT: durable first, then the queue id goes to the client.
    v1::QueueEntry entry;
    entry.set_queue_id(NewQueueId());
    *entry.mutable_envelope() = r.envelope();
    *entry.mutable_session() = r.event().session();
    entry.set_transaction_id(r.event().transaction_id());
    *entry.mutable_committed() = TimeUtil::GetCurrentTime();
    entry.set_broker_id(broker->options().broker_id);
    entry.set_size(message->size());
    if (auto st = message->Commit(entry); !st.ok()) {
      spdlog::error("COMMIT failed: {}", st.ToString());
      r.set_reply(MakeReply(451, "4.3.0",
                            "Error: queue file write error, try again later"));
      return NativeResult::kStop;
    }
    *committed = entry;
    MessagesCounter("committed").Inc();
    r.mutable_event().set_queue_id(entry.queue_id());
    r.set_reply(MakeReply(250, "2.0.0",
                          absl::StrCat("Ok: queued as ", entry.queue_id())));
    spdlog::info(
        "committed queue_id={} session={} from=<{}> recipients={} "
        "size={}",
        entry.queue_id(), r.event().session().session_id(),
        entry.envelope().mail_from(), entry.envelope().recipients_size(),
        entry.size());
    return NativeResult::kReply;
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
  run->Run(native, after_native, [message, committed, broker](ChainRun& r) {
    if (committed->queue_id().empty()) return;
    if (r.envelope_changed()) {
      *committed->mutable_envelope() = r.envelope();
      // Keep the spool's record in step with the envelope that will go out.
      std::string record;
      committed->SerializeToString(&record);
      auto st =
          WriteFileDurably(CommittedEnvelopePath(broker->options().spool_dir,
                                                 committed->queue_id()),
                           record);
      if (!st.ok()) spdlog::error("envelope record: {}", st.ToString());
    }
    if (!r.quarantine_reason().empty()) {
      MessagesCounter("quarantined").Inc();
      spdlog::warn("quarantined queue_id={}: {}", committed->queue_id(),
                   r.quarantine_reason());
      return;
    }
    std::make_shared<Submission>(broker, *committed)->Start();
  });
}

// ---------------------------------------------------------------------------
// Services.

class Broker::SessionServiceImpl final
    : public v1::SessionService::CallbackService {
 public:
  explicit SessionServiceImpl(Broker* broker) : broker_(broker) {}
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Stream(
      grpc::CallbackServerContext* /*context*/) override {
    return new SessionReactor(broker_);
  }

 private:
  Broker* const broker_;
};

class Broker::AdminServiceImpl final : public v1::Admin::CallbackService {
 public:
  explicit AdminServiceImpl(Broker* broker) : broker_(broker) {}

  static grpc::Status ToGrpc(const absl::Status& st) {
    if (st.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(st.code()),
                        std::string(st.message()));
  }
  static grpc::ServerUnaryReactor* Answer(
      grpc::CallbackServerContext* ctx,
      const absl::StatusOr<v1::Binding>& result, v1::BindingResponse* resp) {
    if (result.ok()) *resp->mutable_binding() = *result;
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(result.status()));
    return r;
  }

  grpc::ServerUnaryReactor* ListSinks(grpc::CallbackServerContext* ctx,
                                      const v1::ListSinksRequest*,
                                      v1::ListSinksResponse* resp) override {
    for (const auto& s : broker_->config()->sinks) {
      auto* out = resp->add_sinks();
      out->set_name(s.name);
      out->set_target(s.target);
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* CreateBinding(grpc::CallbackServerContext* ctx,
                                          const v1::CreateBindingRequest* req,
                                          v1::BindingResponse* resp) override {
    return Answer(ctx, broker_->CreateBinding(req->binding()), resp);
  }
  grpc::ServerUnaryReactor* UpdateBinding(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateBindingRequest* req,
                                          v1::BindingResponse* resp) override {
    return Answer(ctx, broker_->UpdateBinding(req->binding()), resp);
  }
  grpc::ServerUnaryReactor* EnableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override {
    return Answer(ctx, broker_->SetBindingEnabled(req->name(), true), resp);
  }
  grpc::ServerUnaryReactor* DisableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override {
    return Answer(ctx, broker_->SetBindingEnabled(req->name(), false), resp);
  }
  grpc::ServerUnaryReactor* DeleteBinding(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteBindingRequest* req,
                                          v1::DeleteBindingResponse*) override {
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(broker_->DeleteBinding(req->name())));
    return r;
  }

  grpc::ServerUnaryReactor* ListBindings(
      grpc::CallbackServerContext* ctx, const v1::ListBindingsRequest*,
      v1::ListBindingsResponse* resp) override {
    for (const auto& b : broker_->config()->bindings) {
      *resp->add_bindings() = b.spec;
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

 private:
  Broker* const broker_;
};

// ---------------------------------------------------------------------------
// Broker.

Broker::Broker(BrokerOptions options, Config config,
               std::unique_ptr<QueueBackend> queue)
    : options_(std::move(options)),
      pool_(std::max(1, options_.workers)),
      queue_(std::move(queue)),
      config_(std::make_shared<const Config>(config)),
      session_service_(std::make_unique<SessionServiceImpl>(this)),
      admin_service_(std::make_unique<AdminServiceImpl>(this)) {
  absl::MutexLock lock(&admin_mu_);
  file_config_ = std::move(config);
}

Broker::~Broker() { Drain(); }

void Broker::Drain() { pool_.join(); }

grpc::Service* Broker::session_service() { return session_service_.get(); }
grpc::Service* Broker::admin_service() { return admin_service_.get(); }

std::shared_ptr<const Config> Broker::config() const {
  absl::MutexLock lock(&mu_);
  return config_;
}

void Broker::SetConfig(Config config) {
  auto next = std::make_shared<const Config>(std::move(config));
  std::vector<std::shared_ptr<SessionState>> live;
  {
    absl::MutexLock lock(&mu_);
    config_ = next;
    for (auto& [raw, weak] : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  const v1::BindingMap map = next->MakeBindingMap();
  for (auto& s : live) {
    asio::post(s->strand(), [s, map] {
      v1::SessionResponse resp;
      *resp.mutable_binding_map() = map;
      s->Send(std::move(resp));
    });
  }
  spdlog::info("configuration: {} sinks, {} bindings; told {} sessions",
               next->sinks.size(), next->bindings.size(), live.size());
}

absl::Status Broker::LoadAdminState() {
  absl::MutexLock lock(&admin_mu_);
  if (options_.admin_state_path.empty()) return absl::OkStatus();
  std::error_code ec;
  if (!fs::exists(options_.admin_state_path, ec)) return absl::OkStatus();
  auto parsed = ParseConfig(ReadFileBytes(options_.admin_state_path),
                            options_.admin_state_path, &file_config_.sinks);
  if (!parsed.ok()) return parsed.status();
  for (auto& b : parsed->bindings) b.spec.set_origin("admin");
  auto merged = MergeBindings(file_config_, parsed->bindings);
  if (!merged.ok()) return merged.status();
  admin_bindings_ = std::move(parsed->bindings);
  SetConfig(std::move(*merged));
  return absl::OkStatus();
}

absl::Status Broker::ReloadFile() {
  auto file = LoadConfig(options_.config_path);
  if (!file.ok()) return file.status();
  return SetFileConfig(std::move(*file));
}

absl::Status Broker::SetFileConfig(Config file) {
  absl::MutexLock lock(&admin_mu_);
  auto merged = MergeBindings(file, admin_bindings_);
  if (!merged.ok()) return merged.status();
  file_config_ = std::move(file);
  SetConfig(std::move(*merged));
  return absl::OkStatus();
}

absl::StatusOr<BindingConfig> Broker::CheckAdminBinding(const v1::Binding& b) {
  if (b.name().empty()) {
    return absl::InvalidArgumentError("binding.name is required");
  }
  if (b.event() == v1::EVENT_TYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError("binding.event is required");
  }
  if (b.event() == v1::EVENT_TYPE_UNKNOWN && b.verb().empty()) {
    return absl::InvalidArgumentError(
        "binding.verb is required for a custom verb");
  }
  BindingConfig bc;
  bc.spec = b;
  if (bc.spec.deadline_ms() == 0) bc.spec.set_deadline_ms(5000);
  // One validation for both sources: the file parser.
  auto parsed =
      ParseConfig(BindingsToYaml({bc}), "admin request", &file_config_.sinks);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(std::string(parsed.status().message()));
  }
  BindingConfig out = std::move(parsed->bindings.front());
  out.spec.set_origin("admin");
  return out;
}

absl::Status Broker::CommitAdmin(std::vector<BindingConfig> next) {
  auto merged = MergeBindings(file_config_, next);
  if (!merged.ok()) return merged.status();
  if (!options_.admin_state_path.empty()) {
    if (auto st =
            WriteFileDurably(options_.admin_state_path, BindingsToYaml(next));
        !st.ok()) {
      return st;
    }
  }
  admin_bindings_ = std::move(next);
  SetConfig(std::move(*merged));
  return absl::OkStatus();
}

namespace {

absl::Status FromFile(const std::string& name, const std::string& path) {
  return absl::FailedPreconditionError(
      absl::StrCat("binding '", name, "' comes from the bindings file ", path,
                   "; change it there"));
}

}  // namespace

absl::StatusOr<v1::Binding> Broker::CreateBinding(const v1::Binding& binding) {
  absl::MutexLock lock(&admin_mu_);
  v1::Binding wanted = binding;
  wanted.set_enabled(true);  // new bindings start enabled
  auto bc = CheckAdminBinding(wanted);
  if (!bc.ok()) return bc.status();
  auto next = admin_bindings_;
  next.push_back(*bc);
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: created binding {}", bc->spec.name());
  return bc->spec;
}

absl::StatusOr<v1::Binding> Broker::UpdateBinding(const v1::Binding& binding) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = std::find_if(next.begin(), next.end(), [&](const auto& b) {
    return b.spec.name() == binding.name();
  });
  if (it == next.end()) {
    for (const auto& b : file_config_.bindings) {
      if (b.spec.name() == binding.name()) {
        return FromFile(binding.name(), options_.config_path);
      }
    }
    return absl::NotFoundError("no binding named '" + binding.name() + "'");
  }
  v1::Binding wanted = binding;
  wanted.set_enabled(it->spec.enabled());  // Enable/Disable change that
  auto bc = CheckAdminBinding(wanted);
  if (!bc.ok()) return bc.status();
  *it = *bc;
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: updated binding {}", bc->spec.name());
  return bc->spec;
}

absl::Status Broker::DeleteBinding(const std::string& name) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = std::find_if(next.begin(), next.end(),
                         [&](const auto& b) { return b.spec.name() == name; });
  if (it == next.end()) {
    for (const auto& b : file_config_.bindings) {
      if (b.spec.name() == name) return FromFile(name, options_.config_path);
    }
    return absl::NotFoundError("no binding named '" + name + "'");
  }
  next.erase(it);
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: deleted binding {}", name);
  return absl::OkStatus();
}

absl::StatusOr<v1::Binding> Broker::SetBindingEnabled(const std::string& name,
                                                      bool enabled) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = std::find_if(next.begin(), next.end(),
                         [&](const auto& b) { return b.spec.name() == name; });
  if (it == next.end()) {
    for (const auto& b : file_config_.bindings) {
      if (b.spec.name() == name) return FromFile(name, options_.config_path);
    }
    return absl::NotFoundError("no binding named '" + name + "'");
  }
  it->spec.set_enabled(enabled);
  v1::Binding out = it->spec;
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: {} binding {}", enabled ? "enabled" : "disabled", name);
  return out;
}

void Broker::Register(const std::shared_ptr<SessionState>& s) {
  absl::MutexLock lock(&mu_);
  sessions_[s.get()] = s;
}

void Broker::Unregister(SessionState* s) {
  absl::MutexLock lock(&mu_);
  sessions_.erase(s);
}

void Broker::RecoverSpool() {
  std::error_code ec;
  for (const auto& entry :
       fs::directory_iterator(fs::path(options_.spool_dir) / "committed", ec)) {
    if (entry.path().extension() != ".env") continue;
    v1::QueueEntry qe;
    if (!qe.ParseFromString(ReadFileBytes(entry.path().string()))) {
      spdlog::error("unreadable envelope record {}", entry.path().string());
      continue;
    }
    spdlog::info("recovered committed queue_id={}; submitting", qe.queue_id());
    auto sub = std::make_shared<Submission>(this, std::move(qe));
    asio::post(pool_, [sub] { sub->Start(); });
  }
}

}  // namespace sinkline::broker
