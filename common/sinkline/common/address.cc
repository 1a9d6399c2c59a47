#include "sinkline/common/address.h"

#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace sinkline {

namespace {

// Printable, no spaces, controls or brackets: the Dot-string and domain
// characters this grammar takes (UTF-8 octets when `utf8`).
bool PlainChars(absl::string_view s, bool utf8) {
  for (unsigned char c : s) {
    if (c <= 32 || c == 127 || c == '<' || c == '>' || c == '(' || c == ')' ||
        c == ',' || c == ';' || c == '\\' || c == '"') {
      return false;
    }
    if (c >= 128 && !utf8) return false;
  }
  return true;
}

// Where the Quoted-string that starts `s` ends (just after its closing
// quote), or npos when `s` does not start with a valid one. qtextSMTP is
// %d32-33 / %d35-91 / %d93-126 (and UTF-8 when `utf8`); a quoted-pair is
// a backslash and one of %d32-126.
size_t QuotedStringEnd(absl::string_view s, bool utf8) {
  if (s.empty() || s[0] != '"') return absl::string_view::npos;
  for (size_t i = 1; i < s.size(); ++i) {
    const unsigned char c = s[i];
    if (c == '"') return i + 1;
    if (c == '\\') {
      if (i + 1 == s.size()) return absl::string_view::npos;
      const unsigned char q = s[++i];
      if (q < 32 || q > 126) return absl::string_view::npos;
    } else if (c < 32 || c == 127 || (c >= 128 && !utf8)) {
      return absl::string_view::npos;
    }
  }
  return absl::string_view::npos;
}

}  // namespace

bool ValidMailbox(absl::string_view a, bool utf8) {
  if (a.empty() || a.size() > 254) return false;
  if (utf8 && !ValidUtf8(a)) return false;
  if (a[0] == '"') {
    const size_t end = QuotedStringEnd(a, utf8);
    if (end == absl::string_view::npos || end + 1 >= a.size() ||
        a[end] != '@') {
      return false;
    }
    const absl::string_view domain = a.substr(end + 1);
    return domain.find('@') == absl::string_view::npos &&
           PlainChars(domain, utf8);
  }
  const size_t at = a.rfind('@');
  if (at == absl::string_view::npos || at == 0 || at + 1 == a.size()) {
    return false;
  }
  return PlainChars(a, utf8);
}

absl::string_view MailboxLocalPart(absl::string_view address) {
  if (!address.empty() && address[0] == '"') {
    const size_t end = QuotedStringEnd(address, /*utf8=*/true);
    if (end != absl::string_view::npos) return address.substr(0, end);
  }
  const size_t at = address.rfind('@');
  return at == absl::string_view::npos ? address : address.substr(0, at);
}

std::string UnquoteLocalPart(absl::string_view local) {
  if (local.size() < 2 || local.front() != '"' || local.back() != '"') {
    return std::string(local);
  }
  std::string out;
  for (size_t i = 1; i + 1 < local.size(); ++i) {
    if (local[i] == '\\' && i + 2 < local.size()) ++i;
    out += local[i];
  }
  return out;
}

bool HasSourceRouting(absl::string_view address) {
  if (address.find('@') == absl::string_view::npos) return false;
  const std::string local = UnquoteLocalPart(MailboxLocalPart(address));
  return local.find_first_of("%!@") != std::string::npos;
}

bool ValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = text[i];
    int extra = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      extra = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      extra = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;
    for (int k = 1; k <= extra; ++k) {
      const unsigned char cc = text[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (extra == 3 && (cp < 0x10000 || cp > 0x10ffff))) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string ToValidUtf8(absl::string_view text) {
  if (ValidUtf8(text)) return std::string(text);
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = text[i];
    const size_t n = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (i + n <= text.size() && ValidUtf8(text.substr(i, n))) {
      out.append(text.data() + i, n);
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
  return out;
}

absl::Status ValidateEnvelopeAddress(absl::string_view address,
                                     bool null_allowed, bool utf8) {
  if (address.empty() && null_allowed) return absl::OkStatus();
  if (ValidMailbox(address, utf8)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "bad address '", absl::CEscape(address.substr(0, 300)),
      "': not a mailbox (local@domain, RFC 5321 §4.1.2",
      utf8 ? ", UTF-8 allowed" : ", ASCII only without SMTPUTF8", ")"));
}

absl::Status ValidateEsmtpParam(absl::string_view key, absl::string_view value,
                                bool utf8) {
  bool ok = !key.empty() && key.size() <= 64 && absl::ascii_isalnum(key[0]);
  for (char c : key) ok = ok && (absl::ascii_isalnum(c) || c == '-');
  for (unsigned char c : value) {
    ok = ok && ((c >= 33 && c <= 126 && c != '=') || (c >= 128 && utf8));
  }
  if (ok && utf8) ok = ValidUtf8(value);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad ESMTP parameter '", absl::CEscape(key.substr(0, 100)),
                     "=", absl::CEscape(value.substr(0, 200)), "'"));
  }
  return absl::OkStatus();
}

}  // namespace sinkline
