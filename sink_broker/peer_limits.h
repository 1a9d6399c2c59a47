// Per-peer limits on the broker's ports: how many session streams one edge
// keeps open, how many Content streams one peer keeps open, how many bytes
// of pending writes (ReplaceBody, WriteRange) one peer has the broker hold.
// A peer is what peer_auth.h names it (a certificate name or the peer's
// host). Each budget is a flag with a default; refusals are counted in
// sinkline_broker_peer_limited_total{limit} and answered RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

// The flags' values (sink_broker/main.cc).
struct PeerLimits {
  // Session streams open at once per edge identity (0: no limit).
  uint64_t session_streams_per_edge = 2000;
  // ReadRange and ReplaceBody streams open at once per peer (0: no limit).
  uint64_t content_streams_per_peer = 256;
  // Bytes of ReplaceBody and WriteRange data buffered at once per peer.
  uint64_t content_inflight_bytes_per_peer = 128u << 20;
  // One ReplaceBody call's new body.
  uint64_t content_max_body_bytes = 64u << 20;
};

// Units (streams or bytes) held per peer, bounded per peer.
class PeerBudget {
 public:
  // `limit_name` labels the metrics; `limit` 0 means no limit.
  PeerBudget(std::string limit_name, uint64_t limit);

  // Takes `n` more for `peer`; false (and counted) when the peer would hold
  // more than the limit.
  bool Take(const std::string& peer, uint64_t n);
  void Give(const std::string& peer, uint64_t n);
  uint64_t held(const std::string& peer) const;
  uint64_t limit() const { return limit_; }
  const std::string& name() const { return name_; }

 private:
  const std::string name_;
  const uint64_t limit_;
  Counter& refused_;
  Gauge& used_;
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> held_ ABSL_GUARDED_BY(mu_);
};

// What one call holds of a budget, given back when it goes.
class PeerShare {
 public:
  PeerShare(PeerBudget* budget, std::string peer)
      : budget_(budget), peer_(std::move(peer)) {}
  ~PeerShare() { Reset(); }
  PeerShare(const PeerShare&) = delete;
  PeerShare& operator=(const PeerShare&) = delete;

  // Takes `n` more; false when the budget is spent.
  bool Grow(uint64_t n);
  void Reset();
  uint64_t held() const { return held_; }

 private:
  PeerBudget* const budget_;
  const std::string peer_;
  uint64_t held_ = 0;
};

// A share of one unit, or null when the budget is spent.
std::unique_ptr<PeerShare> TakeOne(PeerBudget& budget, const std::string& peer);

}  // namespace sinkline::broker
