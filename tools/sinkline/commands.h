// The subcommands of `sinkline`. Each returns an exit code (args.h).
#pragma once

#include <initializer_list>
#include <optional>
#include <string>

#include "tools/sinkline/args.h"
#include "tools/sinkline/client.h"

namespace sinkline::cli {

// Runs the command line (main's whole job).
int Main(int argc, char** argv);

// messages_cmd.cc
int QueueCommand(const Args& args, const Client& client);
int ShowCommand(const Args& args, const Client& client);
// release, hold, delete
int MessageActionCommand(const Args& args, const Client& client);

// bindings_cmd.cc: bindings [enable|disable NAME | apply FILE]
int BindingsCommand(const Args& args, const Client& client);

// status_cmd.cc
int LeasesCommand(const Args& args, const Client& client);
int SessionsCommand(const Args& args, const Client& client);
int DrainCommand(const Args& args, const Client& client);
int CountersCommand(const Args& args, const Client& client);

// check_config_cmd.cc
int CheckConfigCommand(const Args& args, const Client& client);

// A usage error: prints it with the usage text, returns kUsage.
int UsageError(const std::string& message);
// A usage error when the command got a flag not in `allowed`, or a number
// of operands other than `operands` (words after the command name).
std::optional<int> CheckUsage(const Args& args,
                              std::initializer_list<const char*> allowed,
                              size_t min_operands, size_t max_operands);

}  // namespace sinkline::cli
