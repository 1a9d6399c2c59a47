// sinkline-broker: the sink broker service.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "sink_broker/broker.h"
#include "sink_broker/queue_dir.h"
#include "sink_broker/smtp_relay.h"
#include "sink_broker/smtp_relay_flags.h"
#include "sink_broker/spool.h"
#include "sinkline/common/file_stamp.h"
#include "sinkline/common/grpc_security.h"
#include "sinkline/common/grpc_server.h"
#include "sinkline/common/port_file.h"
#include "sinkline/common/process.h"
#include "sinkline/common/shutdown.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7000",
          "gRPC address for edges, sinks and operators (port 0 picks one)");
ABSL_FLAG(std::string, port_file, "",
          "write the bound gRPC port to this file once serving");
ABSL_FLAG(std::string, config, "", "bindings file (YAML); required");
ABSL_FLAG(std::string, spool_dir, "", "durable spool directory; required");
ABSL_FLAG(std::string, queue_dir, "",
          "spool queue directory messages are submitted to (this or "
          "--relay-host is required)");
ABSL_FLAG(int, submit_workers, 20,
          "threads that hand messages to the queue (the relay blocks one per "
          "message in flight)");
ABSL_FLAG(int, submit_retry_min_ms, 1000,
          "first delay before a deferred submission is tried again");
ABSL_FLAG(int, submit_retry_max_ms, 300000,
          "longest delay between attempts (the delay doubles up to it)");
ABSL_FLAG(int64_t, max_queue_age_s, 5 * 24 * 3600,
          "a message still deferred this long after COMMIT fails");
ABSL_FLAG(uint64_t, dsn_max_return_bytes, 10 * 1024 * 1024,
          "a DSN for a message sent with RET=FULL returns the whole message "
          "up to this size, its header only when larger");
ABSL_FLAG(bool, received_header, true,
          "add a Received: trace header with the queue id to every message");
ABSL_FLAG(uint64_t, keep_submitted, 1000,
          "submitted messages the admin service still lists");
ABSL_FLAG(std::string, advertise, "",
          "content endpoint given to sinks (default 127.0.0.1:<port>)");
ABSL_FLAG(std::string, broker_id, "broker-1", "name of this broker");
ABSL_FLAG(uint64_t, inline_max_bytes, 65536,
          "messages up to this size travel inside the EOD event");
ABSL_FLAG(int, workers, 4, "threads for chains, spool and submission");
ABSL_FLAG(std::string, admin_state, "",
          "file that keeps bindings made through the admin service "
          "(default: <spool-dir>/admin-bindings.yaml)");
ABSL_FLAG(int, chain_deadline_ms, 60000,
          "bound on one event's chain before the client's reply");
ABSL_FLAG(int, lease_max_ms, 600000,
          "how far renewals can push a lease, from its grant");
ABSL_FLAG(int, config_poll_ms, 1000,
          "check the bindings file for changes this often (0: SIGHUP only)");
ABSL_FLAG(bool, dump_spool, false,
          "print every record of --spool-dir's store as JSON lines and exit "
          "(read-only; also while a broker runs on it)");
ABSL_FLAG(uint64_t, store_write_buffer_mb, 4,
          "spool store: size of one memtable (two at most), MB");
ABSL_FLAG(uint64_t, store_block_cache_mb, 8,
          "spool store: block cache for reads of flushed records, MB");
ABSL_FLAG(uint64_t, store_max_wal_mb, 64,
          "spool store: the write-ahead log is cut (memtables flushed) past "
          "this size, MB");
ABSL_FLAG(int, spool_scan_interval_ms, 5000,
          "how often the spool is measured for sinkline_broker_spool_bytes "
          "and _messages (0: never)");
ABSL_FLAG(int64_t, max_messages_in_flight, 1000,
          "most messages between EOD and their first hand-off to the queue "
          "backend; at the limit an EOD waits (the client's reply is "
          "delayed), 0: no limit");
ABSL_FLAG(int, in_flight_wait_ms, 30000,
          "how long an EOD waits for an in-flight slot before it is "
          "answered 451 4.3.2");
ABSL_FLAG(uint64_t, lease_max_staged_edits, 1000,
          "edits (header edits, body replacements, range writes, envelope "
          "edits) one lease may stage before it ends; past it a staging call "
          "is refused with RESOURCE_EXHAUSTED (0: no limit)");
ABSL_FLAG(uint64_t, lease_max_staged_bytes, 80u << 20,
          "bytes of edits one lease may stage before it ends; past it a "
          "staging call is refused with RESOURCE_EXHAUSTED (0: no limit)");
ABSL_FLAG(uint32_t, max_sink_calls_in_flight, 256,
          "sink calls of one binding under way at once, unless the binding "
          "sets max_in_flight; a call past it waits for a slot up to its "
          "deadline, then the binding's failure policy applies (0: no "
          "limit)");
ABSL_FLAG(int64_t, max_message_descriptors, -1,
          "descriptors the broker holds for messages (arriving files, lease "
          "snapshots); at the limit a new transaction is answered 451 4.3.2 "
          "(-1: the soft RLIMIT_NOFILE less a quarter, at least 64, kept "
          "for sockets and short-lived files; 0: no limit)");
ABSL_FLAG(uint64_t, spool_min_free_bytes, 64u << 20,
          "free space the spool's file system must keep; below it MAIL is "
          "answered 452 4.3.1 before the client sends a body (0: not "
          "checked)");
ABSL_FLAG(int, spool_free_check_ms, 1000,
          "how often the spool's free space is measured (each transaction "
          "also measures it)");
ABSL_FLAG(std::string, edge_token_file, "",
          "file holding the token edges present on session streams as "
          "'authorization: Bearer <token>' (the edge's --broker-token-file)");
ABSL_FLAG(std::vector<std::string>, edge_client_names, {},
          "client certificate names (CN or DNS SAN) allowed to open session "
          "streams (needs --grpc-tls-ca)");
ABSL_FLAG(bool, session_allow_loopback, false,
          "with neither --edge-token-file nor --edge-client-names, let "
          "callers on loopback open session streams (a development stack on "
          "one machine; never behind a sidecar proxy)");
ABSL_FLAG(uint64_t, session_streams_per_edge, 2000,
          "session streams one edge (certificate name, else host) keeps open "
          "at once (0: no limit)");
ABSL_FLAG(uint64_t, content_streams_per_peer, 256,
          "ReadRange and ReplaceBody streams one peer keeps open at once (0: "
          "no limit)");
ABSL_FLAG(uint64_t, content_inflight_bytes_per_peer, 128u << 20,
          "bytes of ReplaceBody and WriteRange data one peer has the broker "
          "hold at once (0: no limit)");
ABSL_FLAG(uint64_t, content_max_body_bytes, 64u << 20,
          "largest new body one ReplaceBody call may send");
ABSL_FLAG(int, shutdown_grace_s, 25,
          "on SIGTERM: health NOT_SERVING at once, then session streams and "
          "sink calls in flight get this long to finish before they are "
          "cancelled (keep it under the pod's terminationGracePeriodSeconds)");

namespace sb = sinkline::broker;

int main(int argc, char** argv) {
  sinkline::InitProcess(argc, argv, "broker");
  if (absl::GetFlag(FLAGS_dump_spool)) {
    if (auto st = sb::DumpSpool(absl::GetFlag(FLAGS_spool_dir), std::cout);
        !st.ok()) {
      spdlog::critical("{}", st.ToString());
      return 1;
    }
    return 0;
  }
  const std::string config_path = absl::GetFlag(FLAGS_config);
  sb::BrokerOptions opts;
  sinkline::ProcessServices process;
  if (const int rc = sinkline::StartProcess(process); rc != 0) return rc;
  if (auto guard = sinkline::AdminGuard::FromFlags(); !guard.ok()) {
    spdlog::critical("{}", guard.status().ToString());
    return 2;
  } else {
    opts.admin_guard = std::move(*guard);
    if (!opts.admin_guard.configured()) {
      spdlog::warn(
          opts.admin_guard.allow_loopback()
              ? "admin service: no --admin-token-file or "
                "--admin-client-names; only callers on loopback are let in"
              : "admin service: no --admin-token-file, --admin-client-names "
                "or --admin-allow-loopback; every call is refused");
    }
  }
  if (auto edges =
          sb::EdgeGuard::Make(absl::GetFlag(FLAGS_edge_token_file),
                              absl::GetFlag(FLAGS_edge_client_names),
                              absl::GetFlag(FLAGS_session_allow_loopback),
                              !sinkline::GrpcTls().ca_pem.empty());
      !edges.ok()) {
    spdlog::critical("{}", edges.status().ToString());
    return 2;
  } else {
    opts.edge_guard = std::move(*edges);
    const std::string edge_bearer = "Bearer " + opts.edge_guard.token();
    if (!opts.edge_guard.token().empty() && opts.admin_guard.configured() &&
        opts.admin_guard.Decide("ipv4:192.0.2.1:1", &edge_bearer, {}).ok()) {
      spdlog::critical(
          "--edge-token-file and --admin-token-file must hold different "
          "tokens: an edge is not an operator");
      return 2;
    }
    if (!opts.edge_guard.configured()) {
      spdlog::warn(opts.edge_guard.allow_loopback()
                       ? "session service: no --edge-token-file or "
                         "--edge-client-names; only callers on loopback may "
                         "open session streams"
                       : "session service: no --edge-token-file, "
                         "--edge-client-names or --session-allow-loopback; "
                         "every session stream is refused");
    }
  }
  opts.peer_limits.session_streams_per_edge =
      absl::GetFlag(FLAGS_session_streams_per_edge);
  opts.peer_limits.content_streams_per_peer =
      absl::GetFlag(FLAGS_content_streams_per_peer);
  opts.peer_limits.content_inflight_bytes_per_peer =
      absl::GetFlag(FLAGS_content_inflight_bytes_per_peer);
  opts.peer_limits.content_max_body_bytes =
      absl::GetFlag(FLAGS_content_max_body_bytes);
  opts.spool_dir = absl::GetFlag(FLAGS_spool_dir);
  opts.store.write_buffer_bytes = absl::GetFlag(FLAGS_store_write_buffer_mb)
                                  << 20;
  opts.store.block_cache_bytes = absl::GetFlag(FLAGS_store_block_cache_mb)
                                 << 20;
  opts.store.max_wal_bytes = absl::GetFlag(FLAGS_store_max_wal_mb) << 20;
  const std::string queue_dir = absl::GetFlag(FLAGS_queue_dir);
  const std::string relay_host = absl::GetFlag(FLAGS_relay_host);
  if (config_path.empty() || opts.spool_dir.empty() ||
      queue_dir.empty() == relay_host.empty()) {
    spdlog::critical(
        "--config, --spool-dir and one of --queue-dir or --relay-host are "
        "required");
    return 2;
  }
  auto config = sb::LoadConfig(config_path);
  if (!config.ok()) {
    spdlog::critical("configuration refused: {}", config.status().ToString());
    return 2;
  }
  if (auto st = sb::Spool(opts.spool_dir, opts.store).Prepare(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  std::unique_ptr<sb::QueueBackend> queue;
  if (!relay_host.empty()) {
    auto relay = sb::RelayOptionsFromFlags();
    auto backend = relay.ok() ? sb::SmtpRelayBackend::Create(std::move(*relay))
                              : relay.status();
    if (!backend.ok()) {
      spdlog::critical("{}", backend.status().ToString());
      return 2;
    }
    queue = std::move(*backend);
  } else {
    auto dir = sb::QueueDirBackend::Create(queue_dir);
    if (!dir.ok()) {
      spdlog::critical("{}", dir.status().ToString());
      return 1;
    }
    queue = std::move(*dir);
  }
  opts.broker_id = absl::GetFlag(FLAGS_broker_id);
  opts.inline_max_bytes = absl::GetFlag(FLAGS_inline_max_bytes);
  opts.workers = absl::GetFlag(FLAGS_workers);
  opts.submit_workers = absl::GetFlag(FLAGS_submit_workers);
  opts.submit_retry_min =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_submit_retry_min_ms));
  opts.submit_retry_max =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_submit_retry_max_ms));
  opts.max_queue_age =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_max_queue_age_s) * 1000);
  opts.dsn_max_return_bytes = absl::GetFlag(FLAGS_dsn_max_return_bytes);
  opts.keep_submitted = absl::GetFlag(FLAGS_keep_submitted);
  opts.max_messages_in_flight = absl::GetFlag(FLAGS_max_messages_in_flight);
  opts.in_flight_wait =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_in_flight_wait_ms));
  opts.lease_limits.max_staged_edits =
      absl::GetFlag(FLAGS_lease_max_staged_edits);
  opts.lease_limits.max_staged_bytes =
      absl::GetFlag(FLAGS_lease_max_staged_bytes);
  opts.max_sink_calls_in_flight = absl::GetFlag(FLAGS_max_sink_calls_in_flight);
  opts.max_message_descriptors = absl::GetFlag(FLAGS_max_message_descriptors);
  if (opts.max_message_descriptors < 0) {
    opts.max_message_descriptors = sb::MessageDescriptors::DefaultLimit();
  }
  opts.spool_min_free_bytes = absl::GetFlag(FLAGS_spool_min_free_bytes);
  opts.received_header = absl::GetFlag(FLAGS_received_header);
  opts.config_path = config_path;
  opts.admin_state_path = absl::GetFlag(FLAGS_admin_state);
  if (opts.admin_state_path.empty()) {
    opts.admin_state_path = opts.spool_dir + "/admin-bindings.yaml";
  }
  opts.lease_max = std::chrono::milliseconds(absl::GetFlag(FLAGS_lease_max_ms));
  opts.chain_deadline =
      std::chrono::milliseconds(absl::GetFlag(FLAGS_chain_deadline_ms));

  // The content endpoint needs the bound port, and the services need the
  // broker: build the broker first with a placeholder, then fix it up.
  opts.advertise = absl::GetFlag(FLAGS_advertise);
  auto broker =
      std::make_unique<sb::Broker>(opts, std::move(*config), std::move(queue));
  // Nothing is taken in before the spool is recovered: recovery must see
  // only what a previous run left, never a message committing now.
  broker->set_accepting_sessions(false);
  auto server = sinkline::StartGrpcServer(
      absl::GetFlag(FLAGS_listen),
      {broker->session_service(), broker->admin_service(),
       broker->content_service()},
      {"sinkline.v1.SessionService", "sinkline.v1.Admin",
       "sinkline.v1.Content"});
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  // NOT_SERVING until recovered (the content service already answers the
  // sinks that recovery runs again; the edge waits and retries).
  const std::vector<std::string> served = {"", "sinkline.v1.SessionService",
                                           "sinkline.v1.Admin",
                                           "sinkline.v1.Content"};
  for (const auto& name : served) {
    server->SetHealth(name, grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  }
  if (opts.advertise.empty()) {
    // Sinks on this machine reach the broker on loopback.
    opts.advertise = absl::StrCat("127.0.0.1:", server->port);
    broker->set_advertise(opts.advertise);
  }
  if (auto st = broker->bindings().LoadAdminState(); !st.ok()) {
    spdlog::critical("admin bindings refused: {}", st.ToString());
    return 2;
  }
  const auto recovery_start = std::chrono::steady_clock::now();
  const sb::RecoveryCounts recovered = broker->RecoverSpool();
  const auto recovery_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - recovery_start)
          .count();
  spdlog::info(
      "spool recovered in {} ms: {} committed messages resumed, {} held, {} "
      "failed, {} partial files removed",
      recovery_ms, recovered.resumed, recovered.held, recovered.failed,
      recovered.partial_files_removed);
  broker->set_accepting_sessions(true);
  for (const auto& name : served) {
    server->SetHealth(name, grpc::health::v1::HealthCheckResponse::SERVING);
  }
  if (auto st =
          sinkline::WritePortFile(absl::GetFlag(FLAGS_port_file), server->port);
      !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  spdlog::info(
      "limits: {} descriptors for messages, spool minimum free {} bytes, {} "
      "sink calls per binding, {} edits / {} bytes staged per lease",
      opts.max_message_descriptors, opts.spool_min_free_bytes,
      opts.max_sink_calls_in_flight, opts.lease_limits.max_staged_edits,
      opts.lease_limits.max_staged_bytes);
  spdlog::info("broker {} serving on port {} (content endpoint {}, {})",
               opts.broker_id, server->port, opts.advertise,
               sinkline::GrpcTls().enabled() ? "TLS" : "plaintext");
  if (server->health_port != 0) {
    spdlog::info("health alone, in plaintext, on port {}", server->health_port);
  }

  auto reload = [&broker](const char* why) {
    if (auto st = broker->bindings().ReloadFile(); !st.ok()) {
      spdlog::error("configuration refused ({}), keeping the running one: {}",
                    why, st.ToString());
    } else {
      spdlog::info("configuration reloaded ({})", why);
    }
  };
  // Reload when the file changes (a Kubernetes ConfigMap swaps it in place).
  std::atomic<bool> stop{false};
  std::thread watcher;
  if (const int poll = absl::GetFlag(FLAGS_config_poll_ms); poll > 0) {
    watcher = std::thread([&, poll] {
      auto stamp = [&] { return sinkline::FileStamp(config_path); };
      std::string last = stamp();
      while (!stop.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(poll));
        const std::string now = stamp();
        if (!now.empty() && now != last) {
          last = now;
          reload("file changed");
        }
      }
    });
  }
  // The spool's size for operators, measured now and then.
  std::thread scanner;
  if (const int every = absl::GetFlag(FLAGS_spool_scan_interval_ms);
      every > 0) {
    scanner = std::thread([&stop, &broker, every] {
      while (!stop.load()) {
        broker->UpdateGauges();
        for (int waited = 0; waited < every && !stop.load(); waited += 50) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    });
  }
  // The spool's free space, more often than the scan (statvfs is cheap).
  std::thread space_checker;
  if (const int every = absl::GetFlag(FLAGS_spool_free_check_ms);
      every > 0 && opts.spool_min_free_bytes > 0) {
    space_checker = std::thread([&stop, &broker, every] {
      while (!stop.load()) {
        broker->CheckSpoolSpace();
        for (int waited = 0; waited < every && !stop.load(); waited += 50) {
          std::this_thread::sleep_for(
              std::chrono::milliseconds(std::min(50, every)));
        }
      }
    });
  }
  const int sig = sinkline::WaitForShutdownSignal([&] { reload("SIGHUP"); });
  stop.store(true);
  if (watcher.joinable()) watcher.join();
  if (scanner.joinable()) scanner.join();
  if (space_checker.joinable()) space_checker.join();
  spdlog::info("signal {}: shutting down (grace {}s)", sig,
               absl::GetFlag(FLAGS_shutdown_grace_s));
  server->Stop(std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_s)));
  broker->Drain();
  return 0;
}
