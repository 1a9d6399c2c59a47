#include "smtp_edge/policy.h"

#include <crypt.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sinkline::edge {

namespace {

// Compares without an early exit, so the time does not tell how much of a
// hash matched.
bool SameBytes(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

// A SHA-512 hash of a random password, for users that do not exist.
constexpr char kDummyHash[] =
    "$6$sinklinedummy$pDMweAnbXLOv/fl7Qlotp/ZsY41yerdMZiXqbGLYpszLuoTvsyrcRiIQ."
    "W0aFdpC1/QJlaJhJy.I3XNj8E2dT1";

}  // namespace

absl::StatusOr<Credentials> Credentials::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read auth file ", path));
  }
  std::stringstream text;
  text << in.rdbuf();
  auto c = Parse(text.str());
  if (!c.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", c.status().message()));
  }
  return c;
}

absl::StatusOr<Credentials> Credentials::Parse(absl::string_view text) {
  Credentials c;
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++n;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    if (colon == 0 || colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", n, ": expected user:hash"));
    }
    absl::string_view hash = line.substr(colon + 1);
    if (hash.size() < 4 || hash[0] != '$') {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", n,
                       ": the hash must be a crypt(3) hash such as $y$... or "
                       "$6$... (mkpasswd, openssl passwd -6)"));
    }
    c.users_[std::string(line.substr(0, colon))] = std::string(hash);
  }
  return c;
}

bool Credentials::Check(absl::string_view user,
                        absl::string_view password) const {
  auto it = users_.find(std::string(user));
  const std::string hash = it == users_.end() ? kDummyHash : it->second;
  auto data = std::make_unique<crypt_data>();
  const std::string pw(password);
  const char* out = crypt_r(pw.c_str(), hash.c_str(), data.get());
  // crypt_r fails with a string starting with '*' (or NULL).
  const bool match = out != nullptr && out[0] != '*' && SameBytes(out, hash);
  return match && it != users_.end();
}

std::string MailboxDomain(absl::string_view address) {
  const size_t at = address.rfind('@');
  if (at == absl::string_view::npos) return "";
  return absl::AsciiStrToLower(address.substr(at + 1));
}

}  // namespace sinkline::edge
