// The pure SMTP command parser: no I/O, no state. Splits a command line into
// verb and argument, and parses MAIL/RCPT paths with their ESMTP parameters
// (RFC 5321 §4.1.1.2, §4.1.2).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkline::edge {

struct Command {
  std::string verb;      // upper-cased
  std::string argument;  // the rest, leading spaces removed
};

// `line` is without its CRLF.
Command ParseCommand(absl::string_view line);

struct PathArgument {
  std::string address;  // without angle brackets; "" for <>
  std::vector<std::pair<std::string, std::string>> params;  // key upper-cased
};

// Parses "FROM:<path> params" (prefix "FROM:") or "TO:<path> params". The
// prefix is matched case-insensitively; one space after the colon is
// tolerated. Errors are InvalidArgument with a text fit for a 501 reply.
absl::StatusOr<PathArgument> ParsePathArgument(absl::string_view arg,
                                               absl::string_view prefix,
                                               bool allow_null);

// A syntactically acceptable mailbox: local@domain, printable ASCII (or
// UTF-8 when `utf8`), no spaces or brackets, at most 254 octets.
bool ValidMailbox(absl::string_view address, bool utf8);

}  // namespace sinkline::edge
