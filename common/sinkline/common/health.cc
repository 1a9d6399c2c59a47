#include "sinkline/common/health.h"

#include <optional>

namespace sinkline {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream: sends the current status, then each change. At most one
// write in flight; a change during a write is sent after it (only the newest).
class HealthService::Watcher
    : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {}

  // Called with the service's mutex held.
  void Notify(ServingStatus status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    pending_ = status;
    if (!writing_) WriteNextLocked();
  }

  void End() {
    absl::MutexLock lock(&mu_);
    FinishLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked();
      return;
    }
    if (pending_) WriteNextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked();
  }

  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !pending_) return;
    if (*pending_ == last_sent_) {
      pending_.reset();
      return;
    }
    response_.set_status(*pending_);
    last_sent_ = *pending_;
    pending_.reset();
    writing_ = true;
    StartWrite(&response_);
  }

  void FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(grpc::Status::OK);
  }

  HealthService* const service_;
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> last_sent_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;

  friend class HealthService;
};

HealthService::ServingStatus HealthService::StatusLocked(
    const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN
                               : it->second;
}

void HealthService::SetStatus(const std::string& service,
                              ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  statuses_[service] = status;
  for (Watcher* w : watchers_) {
    if (w->name_ == service) w->Notify(status);
  }
}

void HealthService::SetAll(ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, s] : statuses_) s = status;
  statuses_[""] = status;
  for (Watcher* w : watchers_) w->Notify(status);
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (auto& [name, s] : statuses_) s = HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) w->End();
}

void HealthService::Unregister(Watcher* w) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(w);
}

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request,
    HealthCheckResponse* response) {
  auto* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  auto it = statuses_.find(request->service());
  if (it == statuses_.end()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "unknown service " + request->service()));
  } else {
    response->set_status(it->second);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/,
    const HealthCheckRequest* request) {
  auto* w = new Watcher(this, request->service());
  absl::MutexLock lock(&mu_);
  if (shut_down_) {
    w->End();
    return w;
  }
  watchers_.insert(w);
  w->Notify(StatusLocked(request->service()));
  return w;
}

}  // namespace sinkline
