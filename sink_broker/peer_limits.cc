#include "sink_broker/peer_limits.h"

namespace sinkline::broker {

PeerBudget::PeerBudget(std::string limit_name, uint64_t limit)
    : name_(std::move(limit_name)),
      limit_(limit),
      refused_(MetricsRegistry::Default().GetCounter(
          "sinkline_broker_peer_limited_total",
          "Calls refused with RESOURCE_EXHAUSTED because one peer reached a "
          "per-peer limit, by limit.",
          {{"limit", name_}})),
      used_(MetricsRegistry::Default().GetGauge(
          "sinkline_broker_peer_budget_used",
          "Units held now against the per-peer limits, all peers together, "
          "by limit (streams, or bytes of pending writes).",
          {{"limit", name_}})) {}

bool PeerBudget::Take(const std::string& peer, uint64_t n) {
  {
    absl::MutexLock lock(&mu_);
    uint64_t& held = held_[peer];
    if (limit_ == 0 || held + n <= limit_) {
      held += n;
      used_.Add(static_cast<double>(n));
      return true;
    }
    if (held == 0) held_.erase(peer);
  }
  refused_.Inc();
  return false;
}

void PeerBudget::Give(const std::string& peer, uint64_t n) {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(peer);
  if (it == held_.end()) return;
  const uint64_t given = std::min(n, it->second);
  it->second -= given;
  used_.Add(-static_cast<double>(given));
  if (it->second == 0) held_.erase(it);
}

uint64_t PeerBudget::held(const std::string& peer) const {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(peer);
  return it == held_.end() ? 0 : it->second;
}

bool PeerShare::Grow(uint64_t n) {
  if (n == 0) return true;
  if (!budget_->Take(peer_, n)) return false;
  held_ += n;
  return true;
}

void PeerShare::Reset() {
  if (held_ > 0) budget_->Give(peer_, held_);
  held_ = 0;
}

std::unique_ptr<PeerShare> TakeOne(PeerBudget& budget,
                                   const std::string& peer) {
  auto share = std::make_unique<PeerShare>(&budget, peer);
  if (!share->Grow(1)) return nullptr;
  return share;
}

}  // namespace sinkline::broker
