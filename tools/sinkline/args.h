// The command line of `sinkline`: global flags (with SINKLINE_* environment
// defaults that find the stack scripts/start.sh runs), each subcommand's
// own flags, and positional words.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkline::cli {

// Exit codes: what a script can rely on.
enum ExitCode : int {
  kOk = 0,
  kNotFound = 1,     // no such message, binding or file
  kUsage = 2,        // the command line is wrong
  kUnreachable = 3,  // the broker, the edge or a sink did not answer
  kRefused = 4,      // the service (or check-config) said no
};

// Where and how to connect.
struct Connection {
  std::string broker;      // host:port of the broker's Admin service
  std::string edge_admin;  // host:port of an edge's EdgeAdmin service
  std::string tls_cert, tls_key, tls_ca, tls_server_name;  // file paths
  std::string token_file;  // bearer token for the operator services
  int timeout_ms = 10000;
};

struct Args {
  Connection connection;
  bool json = false;
  std::vector<std::string> words;            // the subcommand and its operands
  std::map<std::string, std::string> flags;  // subcommand flags (--state ..)

  std::optional<std::string> Flag(const std::string& name) const;
  bool Has(const std::string& name) const { return flags.count(name) != 0; }
};

// Parses argv. `env` looks an environment variable up (getenv in main,
// a map in tests). A usage error is INVALID_ARGUMENT.
using Env = std::optional<std::string> (*)(const char* name);
absl::StatusOr<Args> ParseArgs(int argc, char** argv, Env env);

// The Sinkline home that scripts/start.sh uses: $SINKLINE_HOME, else the
// checkout's .sinkline beside this binary's build tree, else ./.sinkline.
std::string FindHome(Env env);

}  // namespace sinkline::cli
