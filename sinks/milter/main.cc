// sinkline-sink-milter: any milter (Sendmail/Postfix mail filter protocol,
// version 6) as a Sinkline sink.
#include <spdlog/spdlog.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "sinks/milter/milter_sink.h"

ABSL_FLAG(std::string, milter, "",
          "the milter: inet:host:port, inet:port@host or unix:/path");
ABSL_FLAG(std::string, mode, "eod",
          "eod: replay each transaction at end of data (any replica); "
          "per-command: one milter connection per SMTP session (bind "
          "CONNECT, HELO, MAIL, RCPT, EOD and DISCONNECT with "
          "session_affinity)");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(5),
          "time to connect and negotiate with the milter");
ABSL_FLAG(absl::Duration, command_timeout, absl::Seconds(10),
          "time the milter has to answer each command");
ABSL_FLAG(absl::Duration, eom_timeout, absl::Seconds(30),
          "time the milter has to answer end of message; each "
          "SMFIR_PROGRESS gives it this much again, never past the call's "
          "deadline (the binding's deadline_ms) nor the lease's maximum");
ABSL_FLAG(absl::Duration, progress_extend, absl::Seconds(30),
          "how much each SMFIR_PROGRESS renews the lease");
ABSL_FLAG(int, pool_idle, 0,
          "idle milter connections kept for reuse with SMFIC_QUIT_NC (0: a "
          "new connection per SMTP session, ended with SMFIC_QUIT; libmilter "
          "8.17 as Debian 12 ships it does not answer after QUIT_NC)");
ABSL_FLAG(int, max_packet, 1024 * 1024 + 64,
          "largest packet accepted from the milter, in octets");
ABSL_FLAG(int64_t, max_replaced_body, 64 * 1024 * 1024,
          "largest body a milter may send with SMFIR_REPLBODY, in octets; "
          "it is streamed to the broker as it arrives, a larger one fails "
          "the call (the binding's failure policy applies)");
ABSL_FLAG(absl::Duration, session_idle, absl::Minutes(10),
          "per-command mode: a session not heard of for this long ends");
ABSL_FLAG(std::string, daemon_name, "sinkline", "value of {daemon_name}");
ABSL_FLAG(std::string, connect_macros, "",
          "macros sent at connect (like Postfix's milter_connect_macros); "
          "empty: the built-in list");
ABSL_FLAG(std::string, helo_macros, "", "macros sent at HELO");
ABSL_FLAG(std::string, mail_macros, "", "macros sent at MAIL FROM");
ABSL_FLAG(std::string, rcpt_macros, "", "macros sent at RCPT TO");
ABSL_FLAG(std::string, data_macros, "", "macros sent at DATA");
ABSL_FLAG(std::string, eoh_macros, "", "macros sent at end of headers");
ABSL_FLAG(std::string, eom_macros, "", "macros sent at end of message");

int main(int argc, char** argv) {
  namespace m = sinkline::milter;
  sinkline::sdk::Init(argc, argv, "milter");
  auto address = m::ParseMilterAddress(absl::GetFlag(FLAGS_milter));
  if (!address.ok()) {
    spdlog::critical("--milter: {}", address.status().ToString());
    return 1;
  }
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "eod" && mode != "per-command") {
    spdlog::critical("--mode must be eod or per-command");
    return 1;
  }
  if (absl::GetFlag(FLAGS_max_packet) < 65536 ||
      absl::GetFlag(FLAGS_pool_idle) < 0) {
    spdlog::critical("--max-packet must be at least 65536, --pool-idle >= 0");
    return 1;
  }
  m::MilterSinkOptions o;
  o.per_command = mode == "per-command";
  o.pool.address = *address;
  o.pool.connect_timeout =
      absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_connect_timeout));
  o.pool.command_timeout =
      absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_command_timeout));
  o.pool.max_idle = static_cast<size_t>(absl::GetFlag(FLAGS_pool_idle));
  o.pool.max_packet = static_cast<size_t>(absl::GetFlag(FLAGS_max_packet));
  o.timeouts.command = o.pool.command_timeout;
  o.timeouts.eom = absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_eom_timeout));
  if (absl::GetFlag(FLAGS_max_replaced_body) < 0) {
    spdlog::critical("--max-replaced-body must be >= 0");
    return 1;
  }
  o.timeouts.max_body =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_replaced_body));
  o.progress_extend =
      absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_progress_extend));
  o.session_idle =
      absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_session_idle));
  o.macros.daemon_name = absl::GetFlag(FLAGS_daemon_name);
  const std::pair<m::Stage, std::string> lists[] = {
      {m::Stage::kConnect, absl::GetFlag(FLAGS_connect_macros)},
      {m::Stage::kHelo, absl::GetFlag(FLAGS_helo_macros)},
      {m::Stage::kMail, absl::GetFlag(FLAGS_mail_macros)},
      {m::Stage::kRcpt, absl::GetFlag(FLAGS_rcpt_macros)},
      {m::Stage::kData, absl::GetFlag(FLAGS_data_macros)},
      {m::Stage::kEoh, absl::GetFlag(FLAGS_eoh_macros)},
      {m::Stage::kEom, absl::GetFlag(FLAGS_eom_macros)},
  };
  for (const auto& [stage, list] : lists) {
    if (!list.empty()) {
      o.macros.names[static_cast<uint32_t>(stage)] =
          m::MacroConfig::Parse(list);
    }
  }
  spdlog::info("milter bridge to {} in {} mode", address->ToString(), mode);
  m::MilterSink sink(std::move(o));
  return sinkline::sdk::Serve(sink);
}
