// The pure SMTP command parser: no I/O, no state. Splits a command line into
// verb and argument, and parses MAIL/RCPT paths with their ESMTP parameters
// (RFC 5321 §4.1.1.2, §4.1.2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sinkline/common/address.h"

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

// The mailbox grammar lives in common/ so the broker checks envelope
// edits with the same rules.
using ::sinkline::ValidMailbox;
using ::sinkline::ValidUtf8;

// DSN parameter values (RFC 3461): xtext (ENVID, ORCPT's address);
// NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY; ORCPT=type;xtext;
// RET=FULL or HDRS.
bool ValidXtext(absl::string_view text);
bool ValidNotify(absl::string_view value);
bool ValidOrcpt(absl::string_view value, bool utf8);
bool ValidRet(absl::string_view value);

// "BDAT <size> [LAST]" (RFC 3030): the chunk size, and whether it is the
// last chunk. InvalidArgument when the argument is not that.
struct BdatArgument {
  uint64_t size = 0;
  bool last = false;
};
absl::StatusOr<BdatArgument> ParseBdatArgument(absl::string_view arg);

}  // namespace sinkline::edge
