// The STARTTLS certificate of the edge: the OpenSSL context built from the
// PEM files, a description of the certificate for the log, and reloads for
// new sessions when the files change (a rotated Kubernetes Secret, a renewed
// certificate).
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace sinkline::edge {

// A server context for TLS 1.2 and later, without renegotiation, with the
// certificate chain and key of `cert` and `key` (PEM); fails when either
// does not load or the key does not belong to the certificate.
absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeTlsContext(
    const std::string& cert, const std::string& key);

// "subject, valid until date" of the context's certificate, for the log.
std::string DescribeCertificate(boost::asio::ssl::context& ctx);

// The context new handshakes use. Sessions keep the context they began
// with, so that a reload never touches a handshake under way.
class TlsContext {
 public:
  TlsContext(std::string cert, std::string key)
      : cert_(std::move(cert)), key_(std::move(key)) {}

  // Loads the files (again). A file that does not load leaves the current
  // context in use and returns why; after the first load such a failure
  // also counts in sinkline_edge_tls_reloads_total{result="error"}.
  // `only_if_changed`: do nothing unless either file changed since the
  // last load.
  absl::Status Reload(bool only_if_changed = false);

  // Null before the first load succeeded.
  std::shared_ptr<boost::asio::ssl::context> current() const {
    absl::MutexLock lock(&mu_);
    return ctx_;
  }

 private:
  const std::string cert_;
  const std::string key_;
  mutable absl::Mutex mu_;
  std::shared_ptr<boost::asio::ssl::context> ctx_ ABSL_GUARDED_BY(mu_);
  // What the certificate and key files were when they were last loaded.
  std::string files_stamp_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkline::edge
