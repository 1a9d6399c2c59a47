// sinkline-edge: the SMTP edge server.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/common/port_file.h"
#include "sinkline/common/process.h"
#include "sinkline/common/shutdown.h"
#include "smtp_edge/admin_service.h"
#include "smtp_edge/broker_client.h"
#include "smtp_edge/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:2525",
          "SMTP address, host:port or [v6]:port (port 0 picks one)");
ABSL_FLAG(std::string, port_file, "",
          "write the bound SMTP port to this file once listening");
ABSL_FLAG(std::string, broker, "127.0.0.1:7000",
          "gRPC target of the brokers, e.g. dns:///sinkline-broker:7000");
ABSL_FLAG(std::string, hostname, "",
          "name in the greeting and replies (default: this host's name)");
ABSL_FLAG(std::string, edge_id, "edge-1", "name of this edge");
ABSL_FLAG(uint64_t, max_message_size, 52428800,
          "largest message accepted, in octets (announced with SIZE)");
ABSL_FLAG(int, max_recipients, 100, "recipients per message before 452");
ABSL_FLAG(int, max_line_length, 512, "longest command line, with CRLF");
ABSL_FLAG(int, max_text_line, 1000,
          "longest message line, with CRLF; longer ones refuse the message "
          "(550 5.6.0)");
ABSL_FLAG(int, idle_timeout_s, 300, "close sessions idle this long (421)");
ABSL_FLAG(std::string, bare_lf, "reject",
          "bare LF in commands and DATA: reject|normalize (to CRLF)");
ABSL_FLAG(bool, reject_improper_pipelining, true,
          "input sent with or after DATA before the 354: 554 and close");
ABSL_FLAG(int, command_timeout_s, 300,
          "a command line must be whole this long after its first octet "
          "(421); 0: no limit");
ABSL_FLAG(uint64_t, data_min_rate, 1024,
          "message content slower than this many octets/s on average after "
          "--data-rate-grace-s is cut (421); 0: no limit");
ABSL_FLAG(int, data_rate_grace_s, 30,
          "message content may be slow for this long");
ABSL_FLAG(int, max_session_s, 3600,
          "close sessions this long after they began (421 4.4.2; 0: never)");
ABSL_FLAG(int, max_sessions, 1000,
          "open sessions in total; more get 421 4.7.0 (0: no limit)");
ABSL_FLAG(int, max_sessions_per_client, 50,
          "open sessions from one client address; more get 421 4.7.0 "
          "(0: no limit)");
ABSL_FLAG(int, max_errors, 20,
          "5xx replies in one session before 421 4.7.0 (0: no limit)");
ABSL_FLAG(int, greeting_delay_ms, 0,
          "wait this long before the greeting; a client that talks first "
          "gets 554 5.5.1");
ABSL_FLAG(int, drain_grace_s, 30,
          "on SIGTERM, how long sessions in a transaction may go on before "
          "the edge closes them");
ABSL_FLAG(int, broker_connect_timeout_ms, 5000,
          "how long a new session waits for the broker before 421");
ABSL_FLAG(int, broker_timeout_ms, 120000,
          "how long a command waits for the broker's answer before 451");
ABSL_FLAG(int, broker_stream_idle_ms, 0,
          "a session idle between transactions this long closes its broker "
          "stream (the broker frees its side; about 17 KB on each side) and "
          "opens a new one, waiting for its binding map, at its next "
          "command; 0: never, the stream lives as long as the session");
ABSL_FLAG(std::string, broker_token_file, "",
          "file holding the token sent on every session stream as "
          "'authorization: Bearer <token>' (the broker's --edge-token-file)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain for STARTTLS (no STARTTLS when empty)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");
ABSL_FLAG(int, tls_reload_interval_s, 60,
          "look this often whether --tls-cert or --tls-key changed and load "
          "them for new sessions (0: only on SIGHUP)");
ABSL_FLAG(std::string, auth_file, "",
          "credentials for AUTH PLAIN/LOGIN over TLS: user:crypt-hash lines "
          "(no AUTH when empty)");
ABSL_FLAG(std::vector<std::string>, accepted_domains, {},
          "recipient domains taken by this edge, comma-separated; any other "
          "needs AUTH or a trusted network (554 5.7.1)");
ABSL_FLAG(std::vector<std::string>, trusted_networks, {},
          "CIDR blocks whose clients may relay without AUTH, "
          "comma-separated (none by default)");
ABSL_FLAG(bool, allow_untrusted_routing, false,
          "take recipients with sender-specified routing (user%host@, "
          "host!user@, \"user@host\"@) from clients neither in "
          "--trusted-networks nor authenticated; refused with 550 5.7.1 by "
          "default (Postfix's allow_untrusted_routing = no)");
ABSL_FLAG(std::string, proxy_protocol, "off",
          "PROXY protocol header from trusted proxies: off|v1|v2|any");
ABSL_FLAG(std::vector<std::string>, proxy_trusted, {},
          "comma-separated CIDR blocks of the proxies; with "
          "--proxy-protocol, any other peer is refused");
ABSL_FLAG(int, threads, 2, "I/O threads");
ABSL_FLAG(std::string, admin_listen, "",
          "serve the EdgeAdmin gRPC service (sessions, counters, drain) with "
          "health and reflection on this address; off if empty");
ABSL_FLAG(std::string, admin_port_file, "",
          "write the bound EdgeAdmin port to this file");

int main(int argc, char** argv) {
  sinkline::InitProcess(argc, argv, "edge");
  sinkline::ProcessServices process;
  if (const int rc = sinkline::StartProcess(process); rc != 0) return rc;
  sinkline::edge::EdgeOptions opts;
  opts.hostname = absl::GetFlag(FLAGS_hostname);
  if (opts.hostname.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    opts.hostname = host;
  }
  opts.edge_id = absl::GetFlag(FLAGS_edge_id);
  opts.limits.max_message_size = absl::GetFlag(FLAGS_max_message_size);
  opts.limits.max_recipients = absl::GetFlag(FLAGS_max_recipients);
  opts.limits.max_line_length = absl::GetFlag(FLAGS_max_line_length);
  opts.limits.max_text_line = absl::GetFlag(FLAGS_max_text_line);
  opts.limits.max_errors = absl::GetFlag(FLAGS_max_errors);
  opts.max_session = std::chrono::seconds(absl::GetFlag(FLAGS_max_session_s));
  opts.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  opts.max_sessions_per_client = absl::GetFlag(FLAGS_max_sessions_per_client);
  opts.greeting_delay =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_greeting_delay_ms));
  opts.idle_timeout = std::chrono::seconds(absl::GetFlag(FLAGS_idle_timeout_s));
  opts.command_timeout =
      std::chrono::seconds(absl::GetFlag(FLAGS_command_timeout_s));
  opts.data_min_rate = absl::GetFlag(FLAGS_data_min_rate);
  opts.data_rate_grace =
      std::chrono::seconds(absl::GetFlag(FLAGS_data_rate_grace_s));
  if (const auto b = absl::GetFlag(FLAGS_bare_lf); b == "normalize") {
    opts.limits.normalize_bare_lf = true;
  } else if (b != "reject") {
    spdlog::critical("--bare-lf must be reject or normalize");
    return 1;
  }
  opts.limits.reject_improper_pipelining =
      absl::GetFlag(FLAGS_reject_improper_pipelining);
  opts.broker_connect_timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_broker_connect_timeout_ms));
  opts.broker_timeout =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_broker_timeout_ms));
  opts.broker_stream_idle =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_broker_stream_idle_ms));
  opts.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  opts.tls_key = absl::GetFlag(FLAGS_tls_key);
  opts.tls_reload_interval =
      std::chrono::seconds(absl::GetFlag(FLAGS_tls_reload_interval_s));
  opts.auth_file = absl::GetFlag(FLAGS_auth_file);
  opts.accepted_domains = absl::GetFlag(FLAGS_accepted_domains);
  opts.trusted_networks = absl::GetFlag(FLAGS_trusted_networks);
  opts.allow_untrusted_routing = absl::GetFlag(FLAGS_allow_untrusted_routing);
  if (const auto pp = absl::GetFlag(FLAGS_proxy_protocol); pp == "v1") {
    opts.proxy_protocol = sinkline::edge::ProxyVersions::kV1;
  } else if (pp == "v2") {
    opts.proxy_protocol = sinkline::edge::ProxyVersions::kV2;
  } else if (pp == "any") {
    opts.proxy_protocol = sinkline::edge::ProxyVersions::kAny;
  } else if (pp != "off") {
    spdlog::critical("--proxy-protocol must be off, v1, v2 or any");
    return 1;
  }
  opts.proxy_trusted = absl::GetFlag(FLAGS_proxy_trusted);

  if (const std::string token_file = absl::GetFlag(FLAGS_broker_token_file);
      !token_file.empty()) {
    if (auto st = sinkline::edge::LoadBrokerToken(token_file); !st.ok()) {
      spdlog::critical("{}", st.ToString());
      return 1;
    }
  }
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  sinkline::edge::Server server(
      io, opts, sinkline::edge::MakeBrokerChannel(absl::GetFlag(FLAGS_broker)));
  if (auto st = server.LoadPolicy(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  if (!opts.auth_file.empty() && opts.tls_cert.empty()) {
    spdlog::warn(
        "--auth-file without --tls-cert: AUTH is only offered over "
        "TLS, so no client can authenticate");
  }
  auto port = server.Listen(absl::GetFlag(FLAGS_listen));
  if (!port.ok()) {
    spdlog::critical("{}", port.status().ToString());
    return 1;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_threads)); ++i) {
    threads.emplace_back([&io] { io.run(); });
  }
  if (auto st = sinkline::WritePortFile(absl::GetFlag(FLAGS_port_file), *port);
      !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  spdlog::info("edge {} listening for SMTP on port {} (broker {})",
               opts.edge_id, *port, absl::GetFlag(FLAGS_broker));

  // Draining: no new sessions; idle ones get 421 now, those in a
  // transaction may finish within the grace period; then the rest close.
  // Started by SIGTERM or by EdgeAdmin.Drain (which leaves the process up,
  // NOT_SERVING, for its orchestrator to stop).
  std::optional<sinkline::GrpcServer> admin;
  std::mutex drain_mu;
  std::thread drain_thread;
  auto drain = [&](std::chrono::milliseconds grace) {
    if (admin) {
      admin->SetHealth("", grpc::health::v1::HealthCheckResponse::NOT_SERVING);
      admin->SetHealth("sinkline.v1.EdgeAdmin",
                       grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    }
    spdlog::info("draining {} sessions (grace {}ms)", server.sessions(),
                 grace.count());
    server.Drain();
    const auto drain_end = std::chrono::steady_clock::now() + grace;
    while (server.sessions() > 0 &&
           std::chrono::steady_clock::now() < drain_end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (server.sessions() > 0) {
      spdlog::warn("grace period over: closing {} sessions", server.sessions());
    }
    server.Stop();
  };
  std::unique_ptr<sinkline::edge::EdgeAdminService> admin_service;
  if (const auto addr = absl::GetFlag(FLAGS_admin_listen); !addr.empty()) {
    auto guard = sinkline::AdminGuard::FromFlags();
    if (!guard.ok()) {
      spdlog::critical("{}", guard.status().ToString());
      return 2;
    }
    admin_service = std::make_unique<sinkline::edge::EdgeAdminService>(
        &server, std::move(*guard), [&](std::chrono::milliseconds grace) {
          std::lock_guard<std::mutex> lock(drain_mu);
          if (!drain_thread.joinable()) {
            drain_thread = std::thread(drain, grace);
          }
        });
    auto started = sinkline::StartGrpcServer(addr, {admin_service.get()},
                                             {"sinkline.v1.EdgeAdmin"});
    if (!started.ok()) {
      spdlog::critical("{}", started.status().ToString());
      return 1;
    }
    admin = std::move(*started);
    if (auto st = sinkline::WritePortFile(absl::GetFlag(FLAGS_admin_port_file),
                                          admin->port);
        !st.ok()) {
      spdlog::critical("{}", st.ToString());
      return 1;
    }
    spdlog::info("EdgeAdmin on port {}", admin->port);
  }

  // A renewed certificate is used for new sessions without a restart: on
  // SIGHUP, and when its files change.
  std::atomic<bool> stop_watching{false};
  std::thread tls_watcher;
  if (!opts.tls_cert.empty() && opts.tls_reload_interval.count() > 0) {
    tls_watcher = std::thread([&, every = opts.tls_reload_interval] {
      auto next = std::chrono::steady_clock::now() + every;
      while (!stop_watching.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (std::chrono::steady_clock::now() < next) continue;
        next = std::chrono::steady_clock::now() + every;
        (void)server.ReloadTls(/*only_if_changed=*/true);
      }
    });
  }
  const int sig =
      sinkline::WaitForShutdownSignal([&] { (void)server.ReloadTls(); });
  spdlog::info("signal {}", sig);
  stop_watching.store(true);
  if (tls_watcher.joinable()) tls_watcher.join();
  {
    std::lock_guard<std::mutex> lock(drain_mu);
    if (!drain_thread.joinable()) {
      drain_thread = std::thread(
          drain, std::chrono::seconds(absl::GetFlag(FLAGS_drain_grace_s)));
    }
  }
  drain_thread.join();
  // Let sessions finish closing, and gRPC finish their broker streams,
  // then stop.
  for (int i = 0; i < 50 && (server.sessions() > 0 ||
                             sinkline::edge::BrokerStream::Live() > 0);
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (const int live = sinkline::edge::BrokerStream::Live(); live > 0) {
    spdlog::warn("{} broker streams still open at exit", live);
  }
  if (admin) admin->Stop(std::chrono::milliseconds(500));
  work.reset();
  io.stop();
  for (auto& t : threads) t.join();
  return 0;
}
