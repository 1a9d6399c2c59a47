#include "smtp_edge/parser.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

bool ValidXtext(absl::string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = text[i];
    if (c == '+') {
      if (i + 2 >= text.size()) return false;
      for (int k = 1; k <= 2; ++k) {
        const char h = text[i + k];
        if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'))) return false;
      }
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return false;
    }
  }
  return true;
}

bool ValidNotify(absl::string_view value) {
  if (absl::EqualsIgnoreCase(value, "NEVER")) return true;
  if (value.empty()) return false;
  bool seen[3] = {false, false, false};
  for (absl::string_view v : absl::StrSplit(value, ',')) {
    int k = absl::EqualsIgnoreCase(v, "SUCCESS")   ? 0
            : absl::EqualsIgnoreCase(v, "FAILURE") ? 1
            : absl::EqualsIgnoreCase(v, "DELAY")   ? 2
                                                   : -1;
    if (k < 0 || seen[k]) return false;
    seen[k] = true;
  }
  return true;
}

bool ValidOrcpt(absl::string_view value, bool utf8) {
  const size_t semi = value.find(';');
  if (semi == 0 || semi == absl::string_view::npos ||
      semi + 1 == value.size()) {
    return false;
  }
  for (char c : value.substr(0, semi)) {
    if (!absl::ascii_isalnum(c) && c != '-') return false;
  }
  const absl::string_view addr = value.substr(semi + 1);
  if (utf8 && absl::EqualsIgnoreCase(value.substr(0, semi), "utf-8")) {
    // utf-8-addr-xtext / unitext (RFC 6533): UTF-8, no controls or '='.
    if (!ValidUtf8(addr)) return false;
    for (unsigned char c : addr) {
      if (c < 33 || c == 127 || c == '=') return false;
    }
    return true;
  }
  return ValidXtext(addr);
}

bool ValidRet(absl::string_view value) {
  return absl::EqualsIgnoreCase(value, "FULL") ||
         absl::EqualsIgnoreCase(value, "HDRS");
}

absl::StatusOr<BdatArgument> ParseBdatArgument(absl::string_view arg) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(arg, ' ', absl::SkipEmpty());
  BdatArgument out;
  if (parts.empty() || parts.size() > 2 || parts[0].size() > 18) {
    return absl::InvalidArgumentError("Syntax: BDAT size [LAST]");
  }
  for (char c : parts[0]) {
    if (!absl::ascii_isdigit(c)) {
      return absl::InvalidArgumentError("Syntax: BDAT size [LAST]");
    }
  }
  if (!absl::SimpleAtoi(parts[0], &out.size)) {
    return absl::InvalidArgumentError("Syntax: BDAT size [LAST]");
  }
  if (parts.size() == 2) {
    if (!absl::EqualsIgnoreCase(parts[1], "LAST")) {
      return absl::InvalidArgumentError("Syntax: BDAT size [LAST]");
    }
    out.last = true;
  }
  return out;
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
  // The path ends at the first '>' outside a Quoted-string local part
  // (which may hold '>' and quoted-pairs such as \").
  size_t close = absl::string_view::npos;
  bool quoted = false;
  for (size_t i = 1; i < arg.size(); ++i) {
    const char c = arg[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == '>' && !quoted) {
      close = i;
      break;
    }
  }
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
