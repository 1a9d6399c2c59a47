#include "smtp_edge/tls_context.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "sinkline/common/file_stamp.h"
#include "sinkline/common/metrics.h"

namespace sinkline::edge {

namespace asio = boost::asio;

namespace {

Counter& TlsReloads(const char* result) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_edge_tls_reloads_total",
      "Loads of the STARTTLS certificate after start, by result.",
      {{"result", result}});
}

}  // namespace

absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeTlsContext(
    const std::string& cert, const std::string& key) {
  auto ctx =
      std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  boost::system::error_code ec;
  ctx->set_options(
      asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
          asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use,
      ec);
  // No renegotiation: one handshake per session.
  SSL_CTX_set_options(ctx->native_handle(), SSL_OP_NO_RENEGOTIATION);
  if (!ec) ctx->use_certificate_chain_file(cert, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS certificate ", cert, ": ", ec.message()));
  }
  ctx->use_private_key_file(key, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS key ", key, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS key ", key, " does not belong to certificate ", cert));
  }
  return ctx;
}

std::string DescribeCertificate(asio::ssl::context& ctx) {
  X509* x = SSL_CTX_get0_certificate(ctx.native_handle());
  if (x == nullptr) return "no certificate";
  char subject[256] = {0};
  X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
  std::string until = "?";
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(bio, X509_get0_notAfter(x)) == 1) {
      char* data = nullptr;
      const long n = BIO_get_mem_data(bio, &data);
      until.assign(data, static_cast<size_t>(n));
    }
    BIO_free(bio);
  }
  return absl::StrCat(subject, ", valid until ", until);
}

absl::Status TlsContext::Reload(bool only_if_changed) {
  // Both files as they are now: a rewrite or a rename over either shows.
  const std::string stamp =
      absl::StrCat(FileStamp(cert_), ";", FileStamp(key_));
  bool first;
  {
    absl::MutexLock lock(&mu_);
    if (only_if_changed && stamp == files_stamp_) return absl::OkStatus();
    first = ctx_ == nullptr;
    // A file that does not load is not tried again until it changes.
    files_stamp_ = stamp;
  }
  auto ctx = MakeTlsContext(cert_, key_);
  if (!ctx.ok()) {
    if (!first) {
      TlsReloads("error").Inc();
      spdlog::error("TLS certificate not reloaded, the current one stays: {}",
                    std::string(ctx.status().message()));
    }
    return ctx.status();
  }
  const std::string what = DescribeCertificate(**ctx);
  {
    absl::MutexLock lock(&mu_);
    ctx_ = std::move(*ctx);
  }
  if (first) {
    spdlog::info("TLS certificate {}", what);
  } else {
    TlsReloads("ok").Inc();
    spdlog::info("TLS certificate reloaded for new sessions: {}", what);
  }
  return absl::OkStatus();
}

}  // namespace sinkline::edge
