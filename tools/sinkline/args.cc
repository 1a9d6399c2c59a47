#include "tools/sinkline/args.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sinkline::cli {
namespace {

namespace fs = std::filesystem;

// Flags of every subcommand: those that take a value, and switches.
const std::set<std::string>& ValueFlags() {
  static const auto* flags = new std::set<std::string>{"broker",
                                                       "edge-admin",
                                                       "grpc-tls-cert",
                                                       "grpc-tls-key",
                                                       "grpc-tls-ca",
                                                       "grpc-tls-server-name",
                                                       "admin-token-file",
                                                       "timeout-ms",
                                                       "home",
                                                       "state",
                                                       "reason",
                                                       "grace-ms"};
  return *flags;
}
const std::set<std::string>& Switches() {
  static const auto* flags =
      new std::set<std::string>{"json", "body", "dry-run", "no-health", "help"};
  return *flags;
}

std::string Trimmed(std::string s) {
  return std::string(absl::StripAsciiWhitespace(s));
}

// "127.0.0.1:<port>" from a port file scripts/start.sh wrote, if any.
std::optional<std::string> FromPortFile(const fs::path& path) {
  std::ifstream in(path);
  std::string port;
  if (!in || !std::getline(in, port)) return std::nullopt;
  port = Trimmed(port);
  int n = 0;
  if (!absl::SimpleAtoi(port, &n) || n <= 0 || n > 65535) return std::nullopt;
  return "127.0.0.1:" + port;
}

}  // namespace

std::optional<std::string> Args::Flag(const std::string& name) const {
  auto it = flags.find(name);
  if (it == flags.end()) return std::nullopt;
  return it->second;
}

std::string FindHome(Env env) {
  if (auto home = env("SINKLINE_HOME"); home && !home->empty()) return *home;
  // <checkout>/build/<preset>/bin/sinkline -> <checkout>/.sinkline
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path checkout =
        exe.parent_path().parent_path().parent_path().parent_path();
    if (fs::is_directory(checkout / ".sinkline" / "run", ec)) {
      return (checkout / ".sinkline").string();
    }
  }
  return ".sinkline";
}

absl::StatusOr<Args> ParseArgs(int argc, char** argv, Env env) {
  Args args;
  std::map<std::string, std::string> given;
  bool only_words = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (only_words || !absl::StartsWith(arg, "--") || arg == "--") {
      if (arg == "--" && !only_words) {
        only_words = true;
        continue;
      }
      args.words.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const auto eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    for (char& c : name) {
      if (c == '_') c = '-';
    }
    if (ValueFlags().count(name)) {
      if (!has_value) {
        if (i + 1 >= argc) {
          return absl::InvalidArgumentError("--" + name + " needs a value");
        }
        value = argv[++i];
      }
    } else if (Switches().count(name)) {
      if (has_value) {
        return absl::InvalidArgumentError("--" + name + " takes no value");
      }
      value = "true";
    } else {
      return absl::InvalidArgumentError("unknown flag --" + name);
    }
    given[name] = value;
  }
  // Each setting: the flag, else its SINKLINE_* variable, else what the
  // local stack wrote under $SINKLINE_HOME/run, else the documented default.
  auto pick = [&](const std::string& flag, const char* var) {
    if (auto it = given.find(flag); it != given.end()) return it->second;
    if (auto v = env(var); v && !v->empty()) return *v;
    return std::string();
  };
  std::string home = pick("home", "SINKLINE_HOME");
  if (home.empty()) home = FindHome(env);
  const fs::path run = fs::path(home) / "run";
  Connection& c = args.connection;
  c.broker = pick("broker", "SINKLINE_BROKER");
  if (c.broker.empty()) {
    c.broker = FromPortFile(run / "broker.port").value_or("127.0.0.1:7000");
  }
  c.edge_admin = pick("edge-admin", "SINKLINE_EDGE_ADMIN");
  if (c.edge_admin.empty()) {
    c.edge_admin =
        FromPortFile(run / "edge-admin.port").value_or("127.0.0.1:7300");
  }
  c.tls_cert = pick("grpc-tls-cert", "SINKLINE_GRPC_TLS_CERT");
  c.tls_key = pick("grpc-tls-key", "SINKLINE_GRPC_TLS_KEY");
  c.tls_ca = pick("grpc-tls-ca", "SINKLINE_GRPC_TLS_CA");
  c.tls_server_name =
      pick("grpc-tls-server-name", "SINKLINE_GRPC_TLS_SERVER_NAME");
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--grpc-tls-cert and --grpc-tls-key go together");
  }
  c.token_file = pick("admin-token-file", "SINKLINE_ADMIN_TOKEN_FILE");
  if (std::error_code ec;
      c.token_file.empty() && fs::exists(run / "admin.token", ec)) {
    c.token_file = (run / "admin.token").string();
  }
  if (auto t = pick("timeout-ms", "SINKLINE_TIMEOUT_MS"); !t.empty()) {
    if (!absl::SimpleAtoi(t, &c.timeout_ms) || c.timeout_ms <= 0) {
      return absl::InvalidArgumentError(
          "--timeout-ms must be a positive "
          "number of milliseconds");
    }
  }
  args.json = given.count("json") != 0;
  for (const auto& [name, value] : given) {
    static const std::set<std::string> global = {"broker",
                                                 "edge-admin",
                                                 "grpc-tls-cert",
                                                 "grpc-tls-key",
                                                 "grpc-tls-ca",
                                                 "grpc-tls-server-name",
                                                 "admin-token-file",
                                                 "timeout-ms",
                                                 "home",
                                                 "json"};
    if (!global.count(name)) args.flags[name] = value;
  }
  return args;
}

}  // namespace sinkline::cli
