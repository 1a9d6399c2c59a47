// A small HTTP server (Boost.Beast) that serves the metrics registry on
// GET /metrics and a liveness answer on GET /healthz.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sinkline/common/metrics.h"

namespace sinkline {

class MetricsHttpServer {
 public:
  // Listens on `listen` ("host:port", port 0 picks one) and serves from its
  // own thread until destroyed.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, MetricsRegistry* registry);
  ~MetricsHttpServer();
  int port() const;

  struct Impl;

 private:
  explicit MetricsHttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sinkline
