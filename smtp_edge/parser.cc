#include "parser.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::edge {

Command ParseCommand(absl::string_view line) {
  Command c;
  size_t sp = line.find(' ');
  absl::string_view verb = line.substr(0, sp);
  c.verb = absl::AsciiStrToUpper(verb);
  if (sp != absl::string_view::npos) {
    absl::string_view rest = line.substr(sp + 1);
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    c.argument = std::string(rest);
  }
  return c;
}

bool ValidMailbox(absl::string_view a, bool utf8) {
  if (a.empty() || a.size() > 254) return false;
  const size_t at = a.rfind('@');
  if (at == absl::string_view::npos || at == 0 || at + 1 == a.size()) {
    return false;
  }
  for (unsigned char c : a) {
    if (c <= 32 || c == 127 || c == '<' || c == '>' || c == '(' || c == ')' ||
        c == ',' || c == ';' || c == '\\') {
      return false;
    }
    if (c >= 128 && !utf8) return false;
  }
  return true;
}

absl::StatusOr<PathArgument> ParsePathArgument(absl::string_view arg,
                                               absl::string_view prefix,
                                               bool allow_null) {
  if (arg.size() < prefix.size() ||
      !absl::EqualsIgnoreCase(arg.substr(0, prefix.size()), prefix)) {
    return absl::InvalidArgumentError("Syntax error in parameters");
  }
  arg.remove_prefix(prefix.size());
  if (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
  if (arg.empty() || arg.front() != '<') {
    return absl::InvalidArgumentError("Syntax error: address must be in <>");
  }
  const size_t close = arg.find('>');
  if (close == absl::string_view::npos) {
    return absl::InvalidArgumentError("Syntax error: missing >");
  }
  PathArgument out;
  absl::string_view path = arg.substr(1, close - 1);
  // A source route (<@a,@b:user@c>) is accepted and ignored (§4.1.2).
  if (!path.empty() && path.front() == '@') {
    const size_t colon = path.find(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError("Syntax error in source route");
    }
    path.remove_prefix(colon + 1);
  }
  out.address = std::string(path);
  absl::string_view rest = arg.substr(close + 1);
  if (!rest.empty() && rest.front() != ' ') {
    return absl::InvalidArgumentError("Syntax error after address");
  }
  for (absl::string_view p : absl::StrSplit(rest, ' ', absl::SkipEmpty())) {
    const size_t eq = p.find('=');
    std::string key = absl::AsciiStrToUpper(p.substr(0, eq));
    std::string value =
        eq == absl::string_view::npos ? "" : std::string(p.substr(eq + 1));
    if (key.empty()) {
      return absl::InvalidArgumentError("Syntax error in parameters");
    }
    for (char c : key) {
      if (!absl::ascii_isalnum(c) && c != '-') {
        return absl::InvalidArgumentError("Syntax error in parameters");
      }
    }
    out.params.emplace_back(std::move(key), std::move(value));
  }
  if (out.address.empty() && !allow_null) {
    return absl::InvalidArgumentError("Null address not allowed here");
  }
  return out;
}

}  // namespace sinkline::edge
