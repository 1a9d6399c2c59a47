#include "broker.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "message_edit.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"
#include "trace.h"

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
  if (verdict.hold_lease()) {
    if (binding.content_access() == v1::CONTENT_ACCESS_NONE) {
      return absl::InvalidArgumentError("hold_lease without content access");
    }
    if (!after_commit) {
      return absl::InvalidArgumentError(
          "hold_lease is for sinks after COMMIT; before it the client waits");
    }
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
    sinkline::AddGrpcTlsChannelArgs(args);
    stub = v1::Sink::NewStub(grpc::CreateCustomChannel(
        target, sinkline::GrpcChannelCredentials(), args));
  }
  return stub;
}

// ---------------------------------------------------------------------------
// A chain run: one event through its bindings and the native handler.

// Which post-COMMIT bindings finished with a message, kept beside it in the
// spool (<queue id>.done, one name a line) so that a restart runs only the
// others again.
std::string FinishedPath(const std::string& content_path) {
  return fs::path(content_path).replace_extension(".done").string();
}

void MarkFinished(MessageRecord& record, const std::string& binding) {
  const std::string path = FinishedPath(record.path());
  int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return;
  const std::string line = binding + "\n";
  if (::write(fd, line.data(), line.size()) ==
      static_cast<ssize_t>(line.size())) {
    ::fsync(fd);
  }
  ::close(fd);
}

std::set<std::string> ReadFinished(const std::string& content_path) {
  std::set<std::string> out;
  std::ifstream in(FinishedPath(content_path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.insert(line);
  }
  return out;
}

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

  // For EOD: the message, so sinks with content access get leases (and the
  // content inline) and their edits go through them.
  std::shared_ptr<MessageRecord> message;

  // Recovery after a restart: only the bindings after COMMIT that had not
  // finished run, and sinks are told it is a redelivery.
  void RecoverAfterCommit(const std::set<std::string>& finished) {
    phase_ = Phase::kPost;
    index_ = 0;
    redelivery_ = true;
    std::vector<const BindingConfig*> left;
    for (const auto* b : post_) {
      if (!finished.count(b->spec.name())) left.push_back(b);
    }
    post_ = std::move(left);
  }

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
      MetricsRegistry::Default()
          .GetHistogram("sinkline_broker_chain_seconds",
                        "Time of each event's whole chain of sinks, by event.",
                        {{"event", EventName(event_.type())}})
          .Observe(std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - chain_started_)
                       .count());
      if (done_) done_(*this);
    }
  }

  void Invoke(const BindingConfig* b) {
    if (message && b->spec.content_access() == v1::CONTENT_ACCESS_READ_WRITE) {
      // Writers take turns: wait for a held read-write lease to end.
      auto self = shared_from_this();
      message->WhenNoWriter([self, b] {
        asio::post(self->strand_, [self, b] { self->InvokeNow(b); });
      });
      return;
    }
    InvokeNow(b);
  }

  void InvokeNow(const BindingConfig* b) {
    const v1::Binding& spec = b->spec;
    const SinkConfig* sink = config_->FindSink(spec.sink());
    auto call = std::make_shared<Call>();
    call->binding = b;
    call->started = std::chrono::steady_clock::now();
    v1::SinkRequest& req = call->request;
    *req.mutable_event() = event_;
    *req.mutable_event()->mutable_envelope() =
        message ? message->envelope() : envelope_;
    req.set_binding(spec.name());
    req.set_priority(spec.priority());
    req.set_after_commit(phase_ == Phase::kPost);
    req.set_redelivery(redelivery_);
    if (spec.content_access() != v1::CONTENT_ACCESS_NONE && message) {
      const auto ttl = std::chrono::milliseconds(spec.deadline_ms());
      auto lease = broker_->leases().Grant(message, spec, ttl,
                                           broker_->options().lease_max);
      if (!lease.ok()) {
        return Finished(call,
                        grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     std::string(lease.status().message())));
      }
      call->token = (*lease)->token;
      if (phase_ == Phase::kPost) {
        // A post-COMMIT binding is done when its lease ends normally.
        (*lease)->on_end = [record = message,
                            name = spec.name()](Lease::State how) {
          if (how == Lease::State::kReleased) MarkFinished(*record, name);
        };
      }
      v1::Lease* out = req.mutable_lease();
      out->set_token((*lease)->token);
      auto stamp = [](std::chrono::system_clock::time_point t) {
        return TimeUtil::MillisecondsToTimestamp(
            std::chrono::duration_cast<std::chrono::milliseconds>(
                t.time_since_epoch())
                .count());
      };
      *out->mutable_expires() = stamp((*lease)->expires);
      *out->mutable_max_expires() = stamp((*lease)->max_expires);
      out->set_access(spec.content_access());
      out->set_content_endpoint(broker_->options().advertise);
      const std::string path = message->path();
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
    std::string token;  // the lease, when the binding has content access
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
      // The lease ends with the failed call; nothing it staged is kept.
      if (!call->token.empty()) broker_->leases().Fail(call->token);
      Failure(spec, absl::StrCat(
                        "call failed: ", grpc::StatusCode(status.error_code()),
                        " ", status.error_message()));
      return Step();
    }
    const bool post = phase_ == Phase::kPost;
    if (auto st = ValidateVerdict(event_, spec, post, call->verdict);
        !st.ok()) {
      if (!call->token.empty()) broker_->leases().Fail(call->token);
      Failure(spec, absl::StrCat("invalid verdict: ", st.message()));
      return Step();
    }
    const v1::Verdict& v = call->verdict;
    std::vector<v1::ContentEdit> content(v.content_edits().begin(),
                                         v.content_edits().end());
    std::vector<v1::EnvelopeEdit> envelope(v.envelope_edits().begin(),
                                           v.envelope_edits().end());
    if (!call->token.empty()) {
      // The verdict's edits go through the lease: published when it ends.
      if (v.hold_lease()) {
        for (auto& e : content)
          (void)broker_->leases().StageContent(call->token, e);
        for (auto& e : envelope) {
          (void)broker_->leases().StageEnvelope(call->token, e);
        }
        spdlog::debug("binding={} holds its lease on queue_id={}", spec.name(),
                      event_.queue_id());
      } else if (auto st = broker_->leases().Release(call->token, false,
                                                     content, envelope);
                 !st.ok()) {
        Failure(spec, absl::StrCat("edits failed: ", st.message()));
        return Step();
      }
    } else if (ApplyEnvelopeEdits(v.envelope_edits(), envelope_)) {
      envelope_changed_ = true;
    }
    if (post && call->token.empty() && message) {
      MarkFinished(*message, spec.name());
    }
    const bool has_reply = v.has_reply() && v.reply().code() != 0;
    spdlog::debug("binding={} sink={} event={} action={}", spec.name(),
                  spec.sink(), EventName(event_.type()),
                  v1::Action_Name(v.action()));
    if (post) {
      broker_->messages().Note(
          event_.queue_id(),
          absl::StrCat("sink ", spec.name(), " ",
                       absl::AsciiStrToLower(absl::StripPrefix(
                           v1::Action_Name(v.action()), "ACTION_")),
                       v.hold_lease() ? " (holds its lease)" : "",
                       redelivery_ ? " (redelivery)" : ""));
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
    if (phase_ == Phase::kPost) {
      broker_->messages().Note(event_.queue_id(),
                               absl::StrCat("sink ", spec.name(), " failed (",
                                            policy_name, "): ", why));
    }
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
  bool redelivery_ = false;
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
// Submission of a committed message, retried while the backend defers.

// Where a message held for an operator says why (<queue id>.hold beside the
// content: its state name on the first line, the reason on the second).
std::string HoldPath(const std::string& content_path) {
  return fs::path(content_path).replace_extension(".hold").string();
}

void WriteHold(const std::string& content_path, v1::MessageState state,
               const std::string& reason) {
  auto st = WriteFileDurably(HoldPath(content_path),
                             MessageStateName(state) + "\n" + reason + "\n");
  if (!st.ok()) spdlog::error("hold record: {}", st.ToString());
}

class Submission : public std::enable_shared_from_this<Submission> {
 public:
  Submission(Broker* broker, v1::QueueEntry entry,
             std::shared_ptr<MessageRecord> record = nullptr)
      : broker_(broker),
        entry_(std::move(entry)),
        record_(std::move(record)),
        timer_(std::make_shared<asio::steady_timer>(broker->pool())),
        recipients_(entry_.envelope().recipients_size()) {}

  // Hands the message to the backend on the submission threads (a relay
  // may block on the network; chains never wait for it).
  void Start() {
    auto self = shared_from_this();
    asio::post(broker_->submit_pool(), [self] { self->Attempt(); });
  }

 private:
  std::string ContentPath() const {
    return CommittedContentPath(broker_->options().spool_dir,
                                entry_.queue_id());
  }

  void Attempt() {
    const auto attempt = broker_->operator_actions().BeginAttempt(
        broker_->messages(), entry_.queue_id());
    if (!attempt) {  // held or deleted by an operator meanwhile
      if (record_) broker_->leases().MessageReleased(*record_);
      return;
    }
    const std::string content = ContentPath();
    // THE INVARIANT: nothing goes to the queue while a lease is active.
    const int active = record_ ? record_->active_leases() : 0;
    if (active != 0) {
      MetricsRegistry::Default()
          .GetCounter("sinkline_broker_invariant_violations_total",
                      "Submissions attempted while a lease was active.")
          .Inc();
      spdlog::critical("queue_id={} has {} active leases at submission",
                       entry_.queue_id(), active);
      std::abort();
    }
    auto result = broker_->queue().Submit(entry_, content);
    if (!result.ok()) {
      if (result.status().code() == absl::StatusCode::kFailedPrecondition) {
        return Fail(std::string(result.status().message()));
      }
      return Defer(std::string(result.status().message()));
    }
    for (auto& r : result->refusals) refusals_.push_back(std::move(r));
    for (auto& r : result->refused) refused_.push_back(std::move(r));
    if (!result->deferred.empty()) {
      // Only the deferred recipients are tried again, also after a restart.
      if (result->deferred.size() !=
          static_cast<size_t>(entry_.envelope().recipients_size())) {
        auto* rcpts = entry_.mutable_envelope()->mutable_recipients();
        rcpts->Clear();
        for (auto& r : result->deferred) *rcpts->Add() = std::move(r);
        PersistEnvelope();
      }
      return Defer(result->deferred_reason);
    }
    if (!refusals_.empty()) {
      // What stays for an operator is what was refused; the rest went.
      auto* rcpts = entry_.mutable_envelope()->mutable_recipients();
      rcpts->Clear();
      for (const auto& r : refused_) *rcpts->Add() = r;
      PersistEnvelope();
      return Fail(absl::StrCat(
          refusals_.size(), " of ", recipients_,
          " recipients refused: ", absl::StrJoin(refusals_, "; ")));
    }
    Done(active);
  }

  void Done(int active) {
    const std::string content = ContentPath();
    ::unlink(
        CommittedEnvelopePath(broker_->options().spool_dir, entry_.queue_id())
            .c_str());
    ::unlink(content.c_str());
    ::unlink(FinishedPath(content).c_str());
    if (record_) broker_->leases().MessageReleased(*record_);
    MessagesCounter("submitted").Inc();
    if (entry_.has_committed()) {
      const auto since = sinkline::NowTimestamp() - entry_.committed();
      MetricsRegistry::Default()
          .GetHistogram("sinkline_broker_commit_to_submit_seconds",
                        "Time from COMMIT to the queue backend taking the "
                        "message.")
          .Observe(TimeUtil::DurationToMicroseconds(since) / 1e6);
    }
    broker_->messages().SetState(
        entry_.queue_id(), v1::MESSAGE_STATE_SUBMITTED,
        absl::StrCat("submitted to ", broker_->queue().Describe()));
    spdlog::info(
        "submitted queue_id={} recipients={} size={} active_leases={} to={}",
        entry_.queue_id(), entry_.envelope().recipients_size(), entry_.size(),
        active, broker_->queue().Describe());
  }

  void Defer(const std::string& reason) {
    const auto& opts = broker_->options();
    if (entry_.has_committed()) {
      const auto age = TimeUtil::DurationToMilliseconds(
          sinkline::NowTimestamp() - entry_.committed());
      if (age > opts.max_queue_age.count()) {
        return Fail(absl::StrCat("gave up after ", age / 1000,
                                 " s in the queue: ", reason));
      }
    }
    delay_ = delay_.count() == 0 ? opts.submit_retry_min
                                 : std::min(delay_ * 2, opts.submit_retry_max);
    MessagesCounter("deferred").Inc();
    broker_->messages().SetState(
        entry_.queue_id(), v1::MESSAGE_STATE_RELEASING,
        absl::StrCat("deferred, retry in ", delay_.count(), " ms: ", reason),
        reason);
    spdlog::warn("deferred queue_id={} retry_in_ms={}: {}", entry_.queue_id(),
                 delay_.count(), reason);
    timer_->expires_after(delay_);
    if (!broker_->AddRetryTimer(timer_)) return;  // stays in the spool
    auto self = shared_from_this();
    timer_->async_wait([self](const boost::system::error_code& ec) {
      self->broker_->RemoveRetryTimer(self->timer_.get());
      if (!ec) self->Start();
    });
  }

  // Refused for good: the message moves to <spool>/failed with its reason,
  // and operators see it through the admin service.
  void Fail(const std::string& reason) {
    const std::string& spool = broker_->options().spool_dir;
    const std::string& id = entry_.queue_id();
    const fs::path failed = fs::path(spool) / "failed";
    std::error_code ec;
    fs::rename(ContentPath(), failed / (id + ".msg"), ec);
    if (!ec) {
      fs::rename(CommittedEnvelopePath(spool, id), failed / (id + ".env"), ec);
    }
    auto st = ec ? absl::UnavailableError(ec.message())
                 : WriteFileDurably((failed / (id + ".reason")).string(),
                                    reason + "\n");
    if (st.ok()) st = SyncDirectory((fs::path(spool) / "committed").string());
    if (!st.ok()) {
      spdlog::error("queue_id={}: cannot move to failed/: {}", id,
                    st.ToString());
    }
    ::unlink(FinishedPath(ContentPath()).c_str());
    if (record_) broker_->leases().MessageReleased(*record_);
    MessagesCounter("failed").Inc();
    broker_->messages().SetState(id, v1::MESSAGE_STATE_FAILED,
                                 "failed: " + reason, reason);
    spdlog::error("failed queue_id={}: {}", id, reason);
  }

  void PersistEnvelope() {
    std::string bytes;
    entry_.SerializeToString(&bytes);
    auto st = WriteFileDurably(
        CommittedEnvelopePath(broker_->options().spool_dir, entry_.queue_id()),
        bytes);
    if (!st.ok()) spdlog::error("envelope record: {}", st.ToString());
    broker_->messages().SetEnvelope(entry_.queue_id(), entry_.envelope(),
                                    entry_.size());
  }

  Broker* const broker_;
  v1::QueueEntry entry_;
  std::shared_ptr<MessageRecord> record_;
  std::shared_ptr<asio::steady_timer> timer_;
  const int recipients_;
  std::vector<std::string> refusals_;
  std::vector<v1::Recipient> refused_;
  std::chrono::milliseconds delay_{0};
};

// The chain of a committed message is over: once no lease is active, it is
// quarantined, held, or submitted.
void FinishMessage(Broker* broker, std::shared_ptr<v1::QueueEntry> committed,
                   std::shared_ptr<MessageRecord> record,
                   std::string quarantine) {
  record->ChainDone([committed, broker, record, quarantine] {
    const std::string& id = committed->queue_id();
    std::error_code ec;
    const auto size = fs::file_size(record->path(), ec);
    if (!ec) committed->set_size(size);
    if (record->envelope_edited()) {
      *committed->mutable_envelope() = record->envelope();
      // Keep the spool's record in step with the envelope that goes out.
      std::string bytes;
      committed->SerializeToString(&bytes);
      auto st = WriteFileDurably(
          CommittedEnvelopePath(broker->options().spool_dir, id), bytes);
      if (!st.ok()) spdlog::error("envelope record: {}", st.ToString());
    }
    broker->messages().SetEnvelope(id, committed->envelope(),
                                   committed->size());
    if (!quarantine.empty()) {
      MessagesCounter("quarantined").Inc();
      WriteHold(record->path(), v1::MESSAGE_STATE_QUARANTINED, quarantine);
      broker->messages().SetState(id, v1::MESSAGE_STATE_QUARANTINED,
                                  "quarantined: " + quarantine, quarantine);
      spdlog::warn("quarantined queue_id={}: {}", id, quarantine);
      return;
    }
    if (record->held()) {
      const std::string reason =
          "a lease expired under the hold policy; an operator must release "
          "it";
      MessagesCounter("held").Inc();
      WriteHold(record->path(), v1::MESSAGE_STATE_HELD, reason);
      broker->messages().SetState(id, v1::MESSAGE_STATE_HELD, "held: " + reason,
                                  reason);
      spdlog::warn("held queue_id={}: {}", id, reason);
      return;
    }
    broker->messages().SetState(id, v1::MESSAGE_STATE_RELEASING,
                                "chain over, no lease active");
    std::make_shared<Submission>(broker, *committed, record)->Start();
  });
}

// Edits of a committed message: a new version, fsynced, renamed over the old
// one.
MessageRecord::ApplyEdits CommittedEdits(
    std::shared_ptr<std::weak_ptr<MessageRecord>> holder) {
  return [holder](const std::vector<v1::ContentEdit>& edits) -> absl::Status {
    auto rec = holder->lock();
    if (!rec) return absl::FailedPreconditionError("message released");
    const std::string path = rec->path();
    const std::string tmp = path + ".edit";
    auto size = RewriteMessage(path, tmp, edits);
    if (!size.ok()) return size.status();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::UnavailableError("rename of the new version failed");
    }
    return SyncDirectory(fs::path(path).parent_path().string());
  };
}

// ---------------------------------------------------------------------------
// One edge session stream.

class SessionReactor;

class SessionState : public std::enable_shared_from_this<SessionState> {
 public:
  SessionState(Broker* broker)
      : broker_(broker), strand_(asio::make_strand(broker->pool())) {}
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
  void HandleEvent(const v1::SessionRequest& req);
  void HandleEod(v1::Event event);
  // Content of a transaction that did not reach COMMIT goes.
  void DiscardIncoming() {
    if (incoming_) broker_->messages().Forget(ReceivingKey());
    incoming_.reset();
  }
  std::string ReceivingKey() const {
    return absl::StrCat(session_id_, "-", incoming_tx_);
  }
  // A transaction's content starts: its queue id, its trace header, and
  // its entry for operators.
  void StartIncoming() {
    incoming_qid_ = NewQueueId();
    if (broker_->options().received_header) {
      incoming_error_ = incoming_->Append(ReceivedHeader(
          last_session_, last_envelope_, incoming_qid_, absl::Now()));
    }
    broker_->messages().Track(ReceivingKey(), v1::MESSAGE_STATE_RECEIVING,
                              v1::Envelope(), 0,
                              absl::StrCat("receiving in session ", session_id_,
                                           ", transaction ", incoming_tx_));
  }
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
  // The queue id of the message that arrives: chosen when its content
  // starts (it is in the Received: header), given to the client at COMMIT.
  std::string incoming_qid_;
  v1::SessionInfo last_session_;
  v1::Envelope last_envelope_;
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
        DiscardIncoming();
        incoming_error_ = absl::OkStatus();
        incoming_tx_ = chunk.transaction_id();
        auto m = IncomingMessage::Create(
            broker_->options().spool_dir,
            absl::StrCat(session_id_, "-", chunk.transaction_id()));
        if (m.ok()) {
          incoming_ = std::move(*m);
          StartIncoming();
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
      StartIncoming();
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
  // Edits are published by leases: before COMMIT into the incoming file,
  // after it as a new version, fsynced, renamed over the old one. Readers
  // holding the old version keep their snapshot.
  auto holder = std::make_shared<std::weak_ptr<MessageRecord>>();
  auto record = std::make_shared<MessageRecord>(
      message->path(),
      [message, holder, committed_edits = CommittedEdits(holder)](
          const std::vector<v1::ContentEdit>& edits) -> absl::Status {
        auto rec = holder->lock();
        if (!rec) return absl::FailedPreconditionError("message released");
        if (!rec->queue_id().empty()) return committed_edits(edits);
        const std::string tmp = rec->path() + ".edit";
        auto size = RewriteMessage(rec->path(), tmp, edits);
        if (!size.ok()) return size.status();
        return message->ReplaceWith(tmp, *size);
      });
  *holder = record;
  record->set_envelope(run->event().envelope());
  run->message = record;

  auto native = [message, committed, broker, record,
                 qid = incoming_qid_](ChainRun& r) {
    // COMMIT: durable first, then the queue id goes to the client.
    v1::QueueEntry entry;
    entry.set_queue_id(qid);
    *entry.mutable_envelope() = record->envelope();
    *entry.mutable_session() = r.event().session();
    entry.set_transaction_id(r.event().transaction_id());
    *entry.mutable_committed() = sinkline::NowTimestamp();
    entry.set_broker_id(broker->options().broker_id);
    entry.set_size(message->size());
    if (auto st = message->Commit(entry); !st.ok()) {
      spdlog::error("COMMIT failed: {}", st.ToString());
      r.set_reply(MakeReply(451, "4.3.0",
                            "Error: queue file write error, try again later"));
      return NativeResult::kStop;
    }
    *committed = entry;
    record->set_path(
        CommittedContentPath(broker->options().spool_dir, entry.queue_id()));
    record->set_queue_id(entry.queue_id());
    MessagesCounter("committed").Inc();
    broker->messages().Forget(absl::StrCat(entry.session().session_id(), "-",
                                           entry.transaction_id()));
    broker->messages().Track(
        entry.queue_id(), v1::MESSAGE_STATE_LEASED, entry.envelope(),
        entry.size(),
        absl::StrCat("committed from session ", entry.session().session_id(),
                     " (client ", entry.session().client().ip(), ")"));
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
  run->Run(native, after_native,
           [committed, broker, record, key = ReceivingKey()](ChainRun& r) {
             if (committed->queue_id().empty()) {  // refused before COMMIT
               broker->messages().Forget(key);
               return;
             }
             FinishMessage(broker, committed, record, r.quarantine_reason());
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

  static grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx,
                                          const grpc::Status& st) {
    spdlog::warn("admin call from {} refused: {}", ctx->peer(),
                 st.error_message());
    auto* r = ctx->DefaultReactor();
    r->Finish(st);
    return r;
  }

  grpc::ServerUnaryReactor* ListSinks(grpc::CallbackServerContext* ctx,
                                      const v1::ListSinksRequest*,
                                      v1::ListSinksResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
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
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    return Answer(ctx, broker_->CreateBinding(req->binding()), resp);
  }
  grpc::ServerUnaryReactor* UpdateBinding(grpc::CallbackServerContext* ctx,
                                          const v1::UpdateBindingRequest* req,
                                          v1::BindingResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    return Answer(ctx, broker_->UpdateBinding(req->binding()), resp);
  }
  grpc::ServerUnaryReactor* EnableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    return Answer(ctx, broker_->SetBindingEnabled(req->name(), true), resp);
  }
  grpc::ServerUnaryReactor* DisableBinding(
      grpc::CallbackServerContext* ctx, const v1::SetBindingEnabledRequest* req,
      v1::BindingResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    return Answer(ctx, broker_->SetBindingEnabled(req->name(), false), resp);
  }
  grpc::ServerUnaryReactor* DeleteBinding(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteBindingRequest* req,
                                          v1::DeleteBindingResponse*) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(broker_->DeleteBinding(req->name())));
    return r;
  }

  grpc::ServerUnaryReactor* ListLeases(grpc::CallbackServerContext* ctx,
                                       const v1::ListLeasesRequest*,
                                       v1::ListLeasesResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    for (auto& l : broker_->leases().List()) *resp->add_leases() = l;
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* ListMessages(
      grpc::CallbackServerContext* ctx, const v1::ListMessagesRequest* req,
      v1::ListMessagesResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    std::multimap<std::string, v1::LeaseInfo> leases;
    for (auto& l : broker_->leases().List()) leases.emplace(l.queue_id(), l);
    for (auto& m : broker_->messages().List(req->state())) {
      auto [from, to] = leases.equal_range(m.queue_id());
      for (auto it = from; it != to && !m.queue_id().empty(); ++it) {
        *m.add_leases() = it->second;
      }
      *resp->add_messages() = std::move(m);
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetMessage(grpc::CallbackServerContext* ctx,
                                       const v1::GetMessageRequest* req,
                                       v1::MessageInfo* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    auto m = broker_->GetMessage(req->queue_id());
    if (m.ok()) *resp = std::move(*m);
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(m.status()));
    return r;
  }

  grpc::ServerUnaryReactor* ReleaseMessage(grpc::CallbackServerContext* ctx,
                                           const v1::ReleaseMessageRequest* req,
                                           v1::MessageInfo* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    auto m = broker_->ReleaseMessage(req->queue_id());
    if (m.ok()) *resp = std::move(*m);
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(m.status()));
    return r;
  }

  // Hold, delete and read: operator_actions.cc.
  grpc::ServerUnaryReactor* HoldMessage(grpc::CallbackServerContext* ctx,
                                        const v1::HoldMessageRequest* req,
                                        v1::MessageInfo* resp) override {
    return Operator(ctx, resp, [&] {
      return broker_->operator_actions().Hold(*broker_, req->queue_id(),
                                              req->reason());
    });
  }
  grpc::ServerUnaryReactor* DeleteMessage(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteMessageRequest* req,
                                          v1::MessageInfo* resp) override {
    return Operator(ctx, resp, [&] {
      return broker_->operator_actions().Delete(*broker_, req->queue_id());
    });
  }
  grpc::ServerUnaryReactor* ReadMessage(
      grpc::CallbackServerContext* ctx, const v1::ReadMessageRequest* req,
      v1::ReadMessageResponse* resp) override {
    return Operator(ctx, resp, [&] {
      return broker_->operator_actions().Read(*broker_, *req);
    });
  }
  template <typename Response, typename Action>
  grpc::ServerUnaryReactor* Operator(grpc::CallbackServerContext* ctx,
                                     Response* resp, Action action) {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    auto result = action();
    if (result.ok()) *resp = std::move(*result);
    auto* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(result.status()));
    return r;
  }

  grpc::ServerUnaryReactor* GetCounters(
      grpc::CallbackServerContext* ctx, const v1::GetCountersRequest*,
      v1::GetCountersResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
    for (const auto& [name, value] : MetricsRegistry::Default().Values()) {
      auto* c = resp->add_counters();
      c->set_name(name);
      c->set_value(value < 0 ? 0 : static_cast<uint64_t>(value));
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* ListBindings(
      grpc::CallbackServerContext* ctx, const v1::ListBindingsRequest*,
      v1::ListBindingsResponse* resp) override {
    if (auto st = broker_->options().admin_guard.Check(*ctx); !st.ok()) {
      return Refuse(ctx, st);
    }
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

// The content service: sinks read and write a message by lease token.
class Broker::ContentServiceImpl final : public v1::Content::CallbackService {
 public:
  explicit ContentServiceImpl(Broker* broker) : broker_(broker) {}

  static grpc::Status ToGrpc(const absl::Status& st) {
    if (st.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(st.code()),
                        std::string(st.message()));
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
  static absl::Status CheckClaim(Broker* broker,
                                 const grpc::CallbackServerContext* ctx,
                                 const std::string& token) {
    const auto& md = ctx->client_metadata();
    const auto q = md.find("sinkline-queue-id");
    const auto b = md.find("sinkline-binding");
    if (q == md.end() && b == md.end()) return absl::OkStatus();
    auto lease = broker->leases().Find(token);
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
    auto lease = broker_->leases().Find(token);
    struct stat st {};
    if (!lease.ok() || ::fstat((*lease)->fd, &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_size);
  }

  class Reader : public grpc::ServerWriteReactor<v1::ReadRangeResponse> {
   public:
    Reader(Broker* broker, const grpc::CallbackServerContext* ctx,
           const v1::ReadRangeRequest& req) {
      if (auto st = CheckClaim(broker, ctx, req.token()); !st.ok()) {
        Finish(ToGrpc(st));
        return;
      }
      auto lease = broker->leases().Find(req.token());
      if (!lease.ok()) {
        Finish(ToGrpc(lease.status()));
        return;
      }
      // Our own descriptor on the snapshot: the lease may end meanwhile.
      fd_ = ::dup((*lease)->fd);
      struct stat st {};
      ::fstat(fd_, &st);
      size_ = static_cast<uint64_t>(st.st_size);
      if (req.offset() > size_) {
        Finish(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                            "offset past the end of the message"));
        return;
      }
      pos_ = req.offset();
      end_ = req.length() == 0 ? size_ : std::min(size_, pos_ + req.length());
      Next();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::CANCELLED);
        return;
      }
      Next();
    }
    void OnDone() override {
      if (fd_ >= 0) ::close(fd_);
      delete this;
    }

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
        Finish(grpc::Status::OK);
        return;
      }
      const size_t n = std::min<uint64_t>(65536, end_ - pos_);
      std::string buf(n, '\0');
      const ssize_t got = ::pread(fd_, buf.data(), n, pos_);
      if (got <= 0) {
        Finish(grpc::Status(grpc::StatusCode::INTERNAL, "read failed"));
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
    int fd_ = -1;
    uint64_t size_ = 0, pos_ = 0, end_ = 0;
    bool sent_any_ = false;
    v1::ReadRangeResponse resp_;
  };

  grpc::ServerWriteReactor<v1::ReadRangeResponse>* ReadRange(
      grpc::CallbackServerContext* ctx,
      const v1::ReadRangeRequest* req) override {
    return new Reader(broker_, ctx, *req);
  }

  grpc::ServerUnaryReactor* ReadHeaders(
      grpc::CallbackServerContext* ctx, const v1::ReadHeadersRequest* req,
      v1::ReadHeadersResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    auto lease = broker_->leases().Find(req->token());
    if (!lease.ok()) return Done(ctx, lease.status());
    auto index = (*lease)->message->HeaderIndex((*lease)->fd);
    if (!index.ok()) return Done(ctx, index.status());
    const ParsedHeader& h = **index;
    for (const auto& f : h.fields) {
      auto* out = resp->add_fields();
      out->set_name(f.name);
      std::string value = f.raw.substr(f.name.size() + 1);
      if (!value.empty() && value.front() == ' ') value.erase(0, 1);
      if (value.size() >= 2) value.resize(value.size() - 2);  // CRLF
      out->set_value(std::move(value));
    }
    resp->set_body_offset(h.body_offset);
    return Done(ctx, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* WriteRange(grpc::CallbackServerContext* ctx,
                                       const v1::WriteRangeRequest* req,
                                       v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
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
    auto st = broker_->leases().StageContent(token, std::move(edit));
    if (st.ok()) resp->set_total_size(SnapshotSize(token));
    return Done(ctx, st);
  }
  grpc::ServerUnaryReactor* AddHeader(grpc::CallbackServerContext* ctx,
                                      const v1::AddHeaderRequest* req,
                                      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_add_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* ChangeHeader(grpc::CallbackServerContext* ctx,
                                         const v1::ChangeHeaderRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_change_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* DeleteHeader(grpc::CallbackServerContext* ctx,
                                         const v1::DeleteHeaderRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::ContentEdit e;
    *e.mutable_delete_header() = req->header();
    return Stage(ctx, req->token(), std::move(e), resp);
  }

  class BodyReader : public grpc::ServerReadReactor<v1::ReplaceBodyRequest> {
   public:
    BodyReader(Broker* broker, const grpc::CallbackServerContext* ctx,
               v1::EditResponse* resp)
        : broker_(broker), ctx_(ctx), resp_(resp) {
      StartRead(&req_);
    }
    void OnReadDone(bool ok) override {
      if (ok) {
        if (token_.empty()) token_ = req_.token();
        body_ += req_.data();
        if (body_.size() > kMaxBody) {
          Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "new body larger than 64 MiB"));
          return;
        }
        StartRead(&req_);
        return;
      }
      if (auto st = CheckClaim(broker_, ctx_, token_); !st.ok()) {
        Finish(ToGrpc(st));
        return;
      }
      v1::ContentEdit e;
      e.mutable_replace_body()->set_body(std::move(body_));
      auto st = broker_->leases().StageContent(token_, std::move(e));
      resp_->set_total_size(0);
      Finish(ToGrpc(st));
    }
    void OnDone() override { delete this; }

   private:
    static constexpr size_t kMaxBody = 64u << 20;
    Broker* const broker_;
    const grpc::CallbackServerContext* const ctx_;
    v1::EditResponse* const resp_;
    v1::ReplaceBodyRequest req_;
    std::string token_, body_;
  };
  grpc::ServerReadReactor<v1::ReplaceBodyRequest>* ReplaceBody(
      grpc::CallbackServerContext* ctx, v1::EditResponse* resp) override {
    return new BodyReader(broker_, ctx, resp);
  }

  grpc::ServerUnaryReactor* Envelope(grpc::CallbackServerContext* ctx,
                                     const std::string& token,
                                     v1::EnvelopeEdit edit,
                                     v1::EditResponse* resp) {
    auto st = broker_->leases().StageEnvelope(token, std::move(edit));
    if (st.ok()) resp->set_total_size(SnapshotSize(token));
    return Done(ctx, st);
  }
  grpc::ServerUnaryReactor* SetSender(grpc::CallbackServerContext* ctx,
                                      const v1::SetSenderRequest* req,
                                      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    e.set_set_sender(req->mail_from());
    return Envelope(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* AddRecipient(grpc::CallbackServerContext* ctx,
                                         const v1::AddRecipientRequest* req,
                                         v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    *e.mutable_add_recipient() = req->recipient();
    return Envelope(ctx, req->token(), std::move(e), resp);
  }
  grpc::ServerUnaryReactor* RemoveRecipient(
      grpc::CallbackServerContext* ctx, const v1::RemoveRecipientRequest* req,
      v1::EditResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    v1::EnvelopeEdit e;
    e.set_remove_recipient(req->address());
    return Envelope(ctx, req->token(), std::move(e), resp);
  }

  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* ctx,
                                  const v1::RenewRequest* req,
                                  v1::RenewResponse* resp) override {
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    auto until = broker_->leases().Renew(
        req->token(), std::chrono::milliseconds(req->extend_ms()));
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
    if (auto st = CheckClaim(broker_, ctx, req->token()); !st.ok()) {
      return Done(ctx, st);
    }
    return Done(ctx, broker_->leases().Release(req->token(), req->discard()));
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
      submit_pool_(std::max(1, options_.submit_workers)),
      messages_(
          MessageTable::Limits{.keep_submitted = options_.keep_submitted}),
      queue_(std::move(queue)),
      leases_(std::make_unique<LeaseTable>(pool_)),
      config_(std::make_shared<const Config>(config)),
      session_service_(std::make_unique<SessionServiceImpl>(this)),
      admin_service_(std::make_unique<AdminServiceImpl>(this)),
      content_service_(std::make_unique<ContentServiceImpl>(this)) {
  absl::MutexLock lock(&admin_mu_);
  file_config_ = std::move(config);
}

Broker::~Broker() { Drain(); }

absl::StatusOr<v1::MessageInfo> Broker::GetMessage(
    const std::string& queue_id) {
  auto m = messages_.Get(queue_id);
  if (!m || queue_id.empty()) {
    return absl::NotFoundError("no message with queue id " + queue_id);
  }
  for (auto& l : leases_->List()) {
    if (l.queue_id() == queue_id) *m->add_leases() = std::move(l);
  }
  return *m;
}

absl::StatusOr<v1::MessageInfo> Broker::ReleaseMessage(
    const std::string& queue_id) {
  absl::MutexLock lock(&release_mu_);
  const auto state = messages_.State(queue_id);
  if (!state || queue_id.empty()) {
    return absl::NotFoundError("no message with queue id " + queue_id);
  }
  const std::string& spool = options_.spool_dir;
  const std::string content = CommittedContentPath(spool, queue_id);
  const std::string env = CommittedEnvelopePath(spool, queue_id);
  switch (*state) {
    case v1::MESSAGE_STATE_HELD:
    case v1::MESSAGE_STATE_QUARANTINED:
      break;
    case v1::MESSAGE_STATE_FAILED: {
      const fs::path failed = fs::path(spool) / "failed";
      std::error_code ec;
      fs::rename(failed / (queue_id + ".msg"), content, ec);
      if (!ec) fs::rename(failed / (queue_id + ".env"), env, ec);
      if (ec) {
        return absl::UnavailableError(absl::StrCat(
            "cannot move ", queue_id, " back from failed/: ", ec.message()));
      }
      fs::remove(failed / (queue_id + ".reason"), ec);
      if (auto st = SyncDirectory((fs::path(spool) / "committed").string());
          !st.ok()) {
        return st;
      }
      break;
    }
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("message ", queue_id, " is ", MessageStateName(*state),
                       "; only held, quarantined or failed messages can be "
                       "released"));
  }
  v1::QueueEntry entry;
  if (!entry.ParseFromString(ReadFileBytes(env))) {
    return absl::DataLossError("unreadable envelope record " + env);
  }
  ::unlink(HoldPath(content).c_str());
  messages_.SetState(queue_id, v1::MESSAGE_STATE_RELEASING,
                     "released by an operator");
  spdlog::info("queue_id={} released by an operator (was {})", queue_id,
               MessageStateName(*state));
  std::make_shared<Submission>(this, std::move(entry))->Start();
  return GetMessage(queue_id);
}

bool Broker::AddRetryTimer(const std::shared_ptr<asio::steady_timer>& t) {
  absl::MutexLock lock(&retry_mu_);
  if (draining_) return false;
  retry_timers_[t.get()] = t;
  return true;
}

void Broker::RemoveRetryTimer(asio::steady_timer* t) {
  absl::MutexLock lock(&retry_mu_);
  retry_timers_.erase(t);
}

void Broker::Drain() {
  leases_->CancelTimers();
  {
    absl::MutexLock lock(&retry_mu_);
    draining_ = true;
    for (auto& [raw, weak] : retry_timers_) {
      if (auto t = weak.lock()) asio::post(pool_, [t] { t->cancel(); });
    }
  }
  pool_.join();
  submit_pool_.join();
}

grpc::Service* Broker::content_service() { return content_service_.get(); }

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

// A COMMIT cut short (the process killed between moving the content and
// writing the envelope record) leaves <id>.msg without <id>.env; nobody was
// told 250 for it, so it goes. Partial writes (*.tmp, *.edit) go too: the
// record they would have replaced is intact, and unfinished sinks run again.
void Broker::RemovePartialCommits() {
  const fs::path dir = fs::path(options_.spool_dir) / "committed";
  std::error_code ec;
  std::set<std::string> committed;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    files.push_back(entry.path());
    if (entry.path().extension() == ".env") {
      committed.insert(name.substr(0, name.find('.')));
    }
  }
  int removed = 0;
  for (const auto& path : files) {
    const std::string name = path.filename().string();
    const std::string id = name.substr(0, name.find('.'));
    const auto ext = path.extension();
    if (committed.count(id) != 0 && ext != ".tmp" && ext != ".edit") continue;
    if (fs::remove(path, ec)) {
      ++removed;
      spdlog::warn("removed {} from the spool: {}", name,
                   committed.count(id) ? "an unfinished write"
                                       : "a COMMIT that did not finish");
    }
  }
  if (removed > 0) (void)SyncDirectory(dir.string());
}

void Broker::RecoverSpool() {
  std::error_code ec;
  RemovePartialCommits();
  for (const auto& entry :
       fs::directory_iterator(fs::path(options_.spool_dir) / "failed", ec)) {
    if (entry.path().extension() != ".env") continue;
    v1::QueueEntry failed;
    if (!failed.ParseFromString(ReadFileBytes(entry.path().string()))) continue;
    std::string reason =
        ReadFileBytes(fs::path(entry.path()).replace_extension(".reason"));
    while (!reason.empty() && reason.back() == '\n') reason.pop_back();
    messages_.Track(failed.queue_id(), v1::MESSAGE_STATE_FAILED,
                    failed.envelope(), failed.size(),
                    "found failed in the spool at start");
    messages_.SetState(failed.queue_id(), v1::MESSAGE_STATE_FAILED,
                       "failed: " + reason, reason);
  }
  for (const auto& entry :
       fs::directory_iterator(fs::path(options_.spool_dir) / "committed", ec)) {
    if (entry.path().extension() != ".env") continue;
    auto committed = std::make_shared<v1::QueueEntry>();
    if (!committed->ParseFromString(ReadFileBytes(entry.path().string()))) {
      spdlog::error("unreadable envelope record {}", entry.path().string());
      continue;
    }
    const std::string path =
        CommittedContentPath(options_.spool_dir, committed->queue_id());
    if (std::ifstream hold(HoldPath(path)); hold) {
      // Held or quarantined for an operator: it stays so.
      std::string state_name, reason;
      std::getline(hold, state_name);
      std::getline(hold, reason);
      const auto state = state_name == "held" ? v1::MESSAGE_STATE_HELD
                                              : v1::MESSAGE_STATE_QUARANTINED;
      messages_.Track(committed->queue_id(), state, committed->envelope(),
                      committed->size(), "found in the spool at start");
      messages_.SetState(committed->queue_id(), state,
                         state_name + ": " + reason, reason);
      spdlog::warn("recovered {} queue_id={}: {}", state_name,
                   committed->queue_id(), reason);
      continue;
    }
    messages_.Track(committed->queue_id(), v1::MESSAGE_STATE_LEASED,
                    committed->envelope(), committed->size(),
                    "recovered from the spool at start");
    auto holder = std::make_shared<std::weak_ptr<MessageRecord>>();
    auto record = std::make_shared<MessageRecord>(path, CommittedEdits(holder));
    *holder = record;
    record->set_queue_id(committed->queue_id());
    record->set_envelope(committed->envelope());
    v1::Event event;
    event.set_type(v1::EVENT_TYPE_EOD);
    event.set_queue_id(committed->queue_id());
    event.set_transaction_id(committed->transaction_id());
    *event.mutable_session() = committed->session();
    *event.mutable_envelope() = committed->envelope();
    event.set_message_size(committed->size());
    const std::set<std::string> finished = ReadFinished(path);
    auto run = std::make_shared<ChainRun>(this, asio::make_strand(pool_),
                                          config(), std::move(event));
    run->message = record;
    run->RecoverAfterCommit(finished);
    spdlog::info(
        "recovered committed queue_id={}; running again the sinks after "
        "COMMIT that had not finished ({} had)",
        committed->queue_id(), finished.size());
    Broker* broker = this;
    asio::post(pool_, [run, committed, record, broker] {
      run->Run(nullptr, nullptr, [committed, record, broker](ChainRun& r) {
        FinishMessage(broker, committed, record, r.quarantine_reason());
      });
    });
  }
}

}  // namespace sinkline::broker
