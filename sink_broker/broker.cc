#include "sink_broker/broker.h"

#include <spdlog/spdlog.h>

#include "sink_broker/admin_service.h"
#include "sink_broker/content_service.h"
#include "sink_broker/operator_actions.h"

namespace sinkline::broker {

Broker::Broker(BrokerOptions options, Config config,
               std::unique_ptr<QueueBackend> queue,
               std::unique_ptr<SinkInvoker> sinks)
    : options_(std::move(options)),
      in_flight_(options_.max_messages_in_flight, options_.in_flight_wait),
      sink_calls_(options_.max_sink_calls_in_flight),
      pool_(std::max(1, options_.workers)),
      messages_(
          MessageTable::Limits{.keep_submitted = options_.keep_submitted}),
      spool_(options_.spool_dir, options_.store),
      space_(options_.spool_dir, options_.spool_min_free_bytes),
      queue_(std::move(queue)),
      sinks_(sinks ? std::move(sinks) : std::make_unique<GrpcSinkInvoker>()),
      leases_(pool_, options_.lease_limits),
      chain_options_{.chain_deadline = options_.chain_deadline,
                     .lease_max = options_.lease_max,
                     .inline_max_bytes = options_.inline_max_bytes,
                     .advertise = options_.advertise},
      bindings_(std::move(config), options_.config_path,
                options_.admin_state_path,
                [this](std::shared_ptr<const Config> c) { Publish(c); }),
      submitter_(
          SubmitOptions{.workers = options_.submit_workers,
                        .retry_min = options_.submit_retry_min,
                        .retry_max = options_.submit_retry_max,
                        .max_queue_age = options_.max_queue_age,
                        .dsn_max_return_bytes = options_.dsn_max_return_bytes},
          *queue_, spool_, messages_, leases_, pool_),
      session_gate_(options_.edge_guard,
                    options_.peer_limits.session_streams_per_edge) {
  MessageDescriptors::Default().set_limit(options_.max_message_descriptors);
  space_.set_on_change([this](bool) { Publish(bindings_.config()); });
  space_.Check();
  session_env_.pool = &pool_;
  session_env_.config = [this] { return bindings_.config(); };
  session_env_.binding_map = [this] {
    return EdgeBindingMap(*bindings_.config());
  };
  session_env_.space = &space_;
  session_env_.descriptors = &MessageDescriptors::Default();
  session_env_.chain = ChainEnv{
      .sinks = sinks_.get(),
      .leases = &leases_,
      .messages = &messages_,
      .options = &chain_options_,
      .call_limits = &sink_calls_,
      .finished =
          [spool = &spool_](const std::string& id, const std::string& binding) {
            spool->MarkFinished(id, binding);
          },
      .quarantined =
          [spool = &spool_](const std::string& id, const std::string& reason) {
            if (auto st =
                    spool->WriteHold(id, v1::MESSAGE_STATE_QUARANTINED, reason);
                !st.ok()) {
              spdlog::error("quarantine record for queue_id={}: {}", id,
                            st.ToString());
            }
          },
      .envelope_published =
          [spool = &spool_](const std::string& id,
                            const v1::Envelope& envelope) {
            return spool->WriteEditedEnvelope(id, envelope);
          }};
  session_env_.commit = CommitContext{.spool = &spool_,
                                      .messages = &messages_,
                                      .broker_id = options_.broker_id};
  session_env_.submitter = &submitter_;
  session_env_.in_flight = &in_flight_;
  session_env_.hub = &hub_;
  session_env_.gate = &session_gate_;
  session_env_.received_header = options_.received_header;
  session_service_ = std::make_unique<SessionService>(&session_env_);
  admin_service_ = std::make_unique<AdminService>(
      options_.admin_guard, bindings_, leases_, messages_, submitter_,
      &session_gate_.guard());
  content_service_ = MakeContentService(leases_, options_.peer_limits);
}

Broker::~Broker() { Drain(); }

v1::BindingMap Broker::EdgeBindingMap(const Config& config) const {
  v1::BindingMap map = config.MakeBindingMap();
  if (space_.low()) {
    bool has_mail = false;
    for (int e : map.events()) has_mail |= e == v1::EVENT_TYPE_MAIL;
    if (!has_mail) map.add_events(v1::EVENT_TYPE_MAIL);
  }
  return map;
}

void Broker::Publish(const std::shared_ptr<const Config>& config) {
  const size_t told = hub_.Broadcast(EdgeBindingMap(*config));
  spdlog::info("configuration: {} sinks, {} bindings; told {} sessions",
               config->sinks.size(), config->bindings.size(), told);
}

RecoveryCounts Broker::RecoverSpool() {
  return broker::RecoverSpool(spool_, messages_, session_env_.chain,
                              bindings_.config(), pool_, submitter_);
}

grpc::Service* Broker::session_service() { return session_service_.get(); }
void Broker::set_accepting_sessions(bool accepting) {
  session_service_->set_accepting(accepting);
}
grpc::Service* Broker::admin_service() { return admin_service_.get(); }
grpc::Service* Broker::content_service() { return content_service_.get(); }

void Broker::UpdateGauges() {
  spool_.UpdateGauges();
  UpdateOperatorGauges(messages_, spool_.dir());
}

void Broker::Drain() {
  leases_.CancelTimers();
  submitter_.CancelRetries();
  pool_.join();
  submitter_.Join();
}

}  // namespace sinkline::broker
