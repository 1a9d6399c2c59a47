#include "tools/sinkline/commands.h"

#include <cstdlib>
#include <iostream>
#include <map>

namespace sinkline::cli {
namespace {

constexpr char kUsageText[] = R"(usage: sinkline [flags] COMMAND [ARGS]

Messages (the broker's Admin service):
  queue [--state S]        messages by state (receiving, leased, releasing,
                           submitted, held, quarantined, failed, deleted)
  show ID [--body]         one message: envelope, recipients, leases,
                           history, headers (--body: the whole content)
  release ID               let a held, quarantined or failed message go on
  hold ID [--reason R]     keep a waiting (releasing) message until released
  delete ID                remove a held, quarantined, failed or waiting
                           message from the spool for good
  leases                   active leases
  counters [broker|edge]   counters and gauges

Bindings:
  bindings                 list
  bindings enable NAME     (or disable NAME)
  bindings apply FILE [--dry-run]
                           create or update bindings from a YAML file,
                           showing the difference first

Edges (an edge's EdgeAdmin service):
  sessions                 open SMTP sessions
  drain [EDGE] [--grace-ms N]
                           stop accepting; EDGE is host:port (default
                           --edge-admin)

Files:
  check-config FILE [--no-health]
                           validate a bindings file as the broker does and
                           check that every sink answers health and serves
                           sinkline.v1.Sink

Flags (environment default in brackets; without either, the ports that
scripts/start.sh wrote under $SINKLINE_HOME/run):
  --broker=HOST:PORT       [SINKLINE_BROKER] (else run/broker.port,
                           else 127.0.0.1:7000)
  --edge-admin=HOST:PORT   [SINKLINE_EDGE_ADMIN] (else run/edge-admin.port,
                           else 127.0.0.1:7300)
  --grpc-tls-cert, --grpc-tls-key, --grpc-tls-ca, --grpc-tls-server-name
                           [SINKLINE_GRPC_TLS_CERT, _KEY, _CA, _SERVER_NAME]
  --admin-token-file=F     [SINKLINE_ADMIN_TOKEN_FILE] (else run/admin.token)
  --timeout-ms=N           [SINKLINE_TIMEOUT_MS] (default 10000)
  --home=DIR               [SINKLINE_HOME]
  --json                   print JSON (the services' answers) instead of tables

Exit codes: 0 ok, 1 not found, 2 usage, 3 unreachable, 4 refused.
)";

std::optional<std::string> GetEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

}  // namespace

int UsageError(const std::string& message) {
  std::cerr << "sinkline: " << message << "\n\n" << kUsageText;
  return kUsage;
}

std::optional<int> CheckUsage(const Args& args,
                              std::initializer_list<const char*> allowed,
                              size_t min_operands, size_t max_operands) {
  for (const auto& [name, value] : args.flags) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || name == a;
    if (!ok) {
      return UsageError("--" + name + " does not apply to " +
                        args.words.front());
    }
  }
  const size_t operands = args.words.size() - 1;
  if (operands < min_operands || operands > max_operands) {
    return UsageError("wrong number of arguments for " + args.words.front());
  }
  return std::nullopt;
}

int Main(int argc, char** argv) {
  auto args = ParseArgs(argc, argv, &GetEnv);
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->Has("help") || args->words.empty()) {
    if (args->Has("help")) {
      std::cout << kUsageText;
      return kOk;
    }
    return UsageError("no command");
  }
  auto client = Client::Make(args->connection);
  if (!client.ok()) return ReportLocal("connection", client.status());
  using Command = int (*)(const Args&, const Client&);
  static const std::map<std::string, Command> commands = {
      {"queue", QueueCommand},
      {"show", ShowCommand},
      {"release", MessageActionCommand},
      {"hold", MessageActionCommand},
      {"delete", MessageActionCommand},
      {"bindings", BindingsCommand},
      {"leases", LeasesCommand},
      {"sessions", SessionsCommand},
      {"drain", DrainCommand},
      {"counters", CountersCommand},
      {"check-config", CheckConfigCommand},
  };
  auto it = commands.find(args->words.front());
  if (it == commands.end()) {
    return UsageError("unknown command '" + args->words.front() + "'");
  }
  return it->second(*args, *client);
}

}  // namespace sinkline::cli
