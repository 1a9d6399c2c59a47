// The command table of the session (session.h): per verb, the event it
// raises, the check that gives the native reply, and the proceed step that
// applies the state change once the broker resolved the reply. Internal to
// the session's files (session.cc, commands.cc, session_content.cc).
#pragma once

#include <string>

#include "smtp_edge/session.h"

namespace sinkline::edge {

// The command table: per verb, the event it raises, the check that gives
// the native reply (or answers at once), and the proceed step that applies
// the state change once the reply is resolved.
struct Session::CommandSpec {
  const char* verb;
  v1::EventType event;
  // Returns the native reply; clears `to_broker` when the edge answers on
  // its own (syntax and sequence errors never reach sinks).
  edge::Reply (*check)(Session& s, const Command& c, bool& to_broker);
  // Applies the state change for a resolved reply.
  void (*proceed)(Session& s, const Command& c, const edge::Reply& resolved);
};

// The spec of a verb the table knows, or null.
const Session::CommandSpec* FindCommand(const std::string& verb);

// Events that are not a verb of the table: a verb it does not know (when
// bound), the greeting, and the end of a message's content.
extern const Session::CommandSpec kUnknownCommand;
extern const Session::CommandSpec kConnectEvent;
extern const Session::CommandSpec kEodEvent;

}  // namespace sinkline::edge
