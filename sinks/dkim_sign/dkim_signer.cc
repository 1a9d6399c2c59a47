#include "sinks/dkim_sign/dkim_signer.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

// dkim.h is a C header that spells the boolean type _Bool.
#define _Bool bool
#include <dkim.h>
#undef _Bool

namespace sinkline::sinks {

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Checks that `pem` holds a private key of the algorithm's type.
absl::Status CheckKey(const std::string& pem, DkimAlgorithm algorithm,
                      const std::string& path) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return absl::ResourceExhaustedError("BIO_new_mem_buf");
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a PEM private key"));
  }
  const int type = EVP_PKEY_get_base_id(pkey);
  const int bits = EVP_PKEY_get_bits(pkey);
  EVP_PKEY_free(pkey);
  if (algorithm == DkimAlgorithm::kRsaSha256) {
    if (type != EVP_PKEY_RSA) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": rsa-sha256 needs an RSA key"));
    }
    if (bits < 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": RSA key of ", bits, " bits; 1024 at least"));
    }
  } else if (type != EVP_PKEY_ED25519) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ed25519-sha256 needs an Ed25519 key"));
  }
  return absl::OkStatus();
}

std::string Where(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null()
             ? std::string("")
             : absl::StrCat(mark.line + 1, ":", mark.column + 1, ": ");
}

absl::StatusOr<DkimKey> ParseKey(const YAML::Node& node,
                                 const std::string& base_dir) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(node), "a key is a map (selector, algorithm, key)"));
  }
  DkimKey key;
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::string value = kv.second.as<std::string>();
    if (name == "selector") {
      key.selector = value;
    } else if (name == "algorithm") {
      if (value == "rsa-sha256") {
        key.algorithm = DkimAlgorithm::kRsaSha256;
      } else if (value == "ed25519-sha256") {
        key.algorithm = DkimAlgorithm::kEd25519Sha256;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(kv.second), "algorithm \"", value,
                         "\": rsa-sha256 or ed25519-sha256"));
      }
    } else if (name == "key") {
      key.key_path = (value.empty() || value.front() == '/')
                         ? value
                         : absl::StrCat(base_dir, "/", value);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(kv.first), "unknown key \"", name, "\""));
    }
  }
  if (key.selector.empty() || key.key_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(node), "selector and key are required"));
  }
  if (key.selector.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO"
                                     "PQRSTUVWXYZ0123456789-._") !=
      std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(node), "bad selector \"", key.selector, "\""));
  }
  auto pem = ReadFile(key.key_path);
  if (!pem.ok()) return pem.status();
  key.pem = *std::move(pem);
  if (auto st = CheckKey(key.pem, key.algorithm, key.key_path); !st.ok()) {
    return st;
  }
  return key;
}

// The header block's fields, unfolded: (lower-case name, value).
std::vector<std::pair<std::string, std::string>> HeaderFields(
    absl::string_view message) {
  std::vector<std::pair<std::string, std::string>> fields;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t eol = message.find("\r\n", pos);
    if (eol == absl::string_view::npos) eol = message.size();
    absl::string_view line = message.substr(pos, eol - pos);
    pos = eol + 2;
    if (line.empty()) break;  // end of the header block
    if ((line.front() == ' ' || line.front() == '\t') && !fields.empty()) {
      absl::StrAppend(&fields.back().second, " ", line);
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    fields.emplace_back(absl::AsciiStrToLower(
                            absl::StripAsciiWhitespace(line.substr(0, colon))),
                        std::string(line.substr(colon + 1)));
  }
  return fields;
}

}  // namespace

absl::StatusOr<DkimKeys> ParseDkimKeys(absl::string_view yaml,
                                       const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  try {
    if (!root.IsMap() || !root["domains"] || !root["domains"].IsMap()) {
      return absl::InvalidArgumentError("expected a map \"domains\"");
    }
    for (const auto& top : root) {
      if (top.first.as<std::string>() != "domains") {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(top.first), "unknown key \"",
                         top.first.as<std::string>(), "\""));
      }
    }
    DkimKeys keys;
    for (const auto& domain : root["domains"]) {
      const std::string name =
          absl::AsciiStrToLower(domain.first.as<std::string>());
      if (name.empty() || name.find('@') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(domain.first), "bad domain \"", name, "\""));
      }
      if (keys.count(name) > 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            Where(domain.first), "domain \"", name, "\" given twice"));
      }
      auto& list = keys[name];
      const YAML::Node& value = domain.second;
      if (value.IsSequence()) {
        for (const auto& item : value) {
          auto key = ParseKey(item, base_dir);
          if (!key.ok()) return key.status();
          list.push_back(*std::move(key));
        }
      } else {
        auto key = ParseKey(value, base_dir);
        if (!key.ok()) return key.status();
        list.push_back(*std::move(key));
      }
      if (list.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            Where(domain.first), "domain \"", name, "\" has no keys"));
      }
    }
    return keys;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
}

absl::StatusOr<DkimKeys> LoadDkimKeys(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  const size_t slash = path.rfind('/');
  auto keys = ParseDkimKeys(
      *text, slash == std::string::npos ? "." : path.substr(0, slash));
  if (!keys.ok()) {
    return absl::Status(keys.status().code(),
                        absl::StrCat(path, ":", keys.status().message()));
  }
  return keys;
}

std::string FromDomain(absl::string_view value) {
  absl::string_view addr = value;
  // "Name <local@domain>": the part in angle brackets.
  if (size_t lt = value.find('<'); lt != absl::string_view::npos) {
    size_t gt = value.find('>', lt);
    if (gt == absl::string_view::npos) gt = value.size();
    addr = value.substr(lt + 1, gt - lt - 1);
  } else if (size_t comma = value.find(','); comma != absl::string_view::npos) {
    addr = value.substr(0, comma);
  }
  const size_t at = addr.rfind('@');
  if (at == absl::string_view::npos) return "";
  absl::string_view domain = addr.substr(at + 1);
  const size_t end = domain.find_first_of(" \t\r\n>(;,");
  if (end != absl::string_view::npos) domain = domain.substr(0, end);
  std::string lower = absl::AsciiStrToLower(domain);
  while (!lower.empty() && lower.back() == '.') lower.pop_back();
  return lower;
}

absl::StatusOr<std::unique_ptr<DkimSigner>> DkimSigner::Create(
    DkimKeys keys, DkimSignerOptions options) {
  DKIM_LIB* lib = dkim_init(nullptr, nullptr);
  if (lib == nullptr) return absl::InternalError("dkim_init failed");
  if (!dkim_libfeature(lib, DKIM_FEATURE_ED25519)) {
    for (const auto& [domain, list] : keys) {
      for (const auto& key : list) {
        if (key.algorithm == DkimAlgorithm::kEd25519Sha256) {
          dkim_close(lib);
          return absl::UnimplementedError(
              "this libopendkim cannot sign with Ed25519");
        }
      }
    }
  }
  std::unique_ptr<DkimSigner> signer(new DkimSigner(std::move(keys), lib));
  signer->sign_storage_ = std::move(options.sign_headers);
  signer->oversign_storage_ = std::move(options.oversign_headers);
  for (const auto& h : signer->sign_storage_) {
    signer->sign_.push_back(h.c_str());
  }
  signer->sign_.push_back(nullptr);
  for (const auto& h : signer->oversign_storage_) {
    signer->oversign_.push_back(h.c_str());
  }
  signer->oversign_.push_back(nullptr);
  if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS,
                   signer->sign_.data(), sizeof(char**)) != DKIM_STAT_OK) {
    return absl::InternalError("dkim_options SIGNHDRS failed");
  }
  if (!signer->oversign_storage_.empty() &&
      dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS,
                   signer->oversign_.data(), sizeof(char**)) != DKIM_STAT_OK) {
    return absl::InternalError("dkim_options OVERSIGNHDRS failed");
  }
  return signer;
}

DkimSigner::~DkimSigner() { dkim_close(lib_); }

std::string DkimSigner::SigningDomain(absl::string_view message) const {
  for (const auto& [name, value] : HeaderFields(message)) {
    if (name != "from") continue;
    std::string domain = FromDomain(value);
    while (!domain.empty()) {
      if (keys_.count(domain) > 0) return domain;
      const size_t dot = domain.find('.');
      if (dot == std::string::npos) break;
      domain = domain.substr(dot + 1);
    }
    return "";
  }
  return "";
}

absl::StatusOr<std::vector<std::string>> DkimSigner::Sign(
    absl::string_view message, absl::string_view id) const {
  std::vector<std::string> signatures;
  const std::string domain = SigningDomain(message);
  if (domain.empty()) return signatures;
  for (const DkimKey& key : keys_.at(domain)) {
    auto sig = SignOne(message, id, domain, key);
    if (!sig.ok()) return sig.status();
    signatures.push_back(*std::move(sig));
  }
  return signatures;
}

absl::StatusOr<std::string> DkimSigner::SignOne(absl::string_view message,
                                                absl::string_view id,
                                                const std::string& domain,
                                                const DkimKey& key) const {
  const std::string job_id =
      id.empty() ? std::string("message") : std::string(id);
  DKIM_STAT status = DKIM_STAT_OK;
  DKIM* dkim = dkim_sign(
      lib_, reinterpret_cast<const unsigned char*>(job_id.c_str()), nullptr,
      reinterpret_cast<dkim_sigkey_t>(const_cast<char*>(key.pem.c_str())),
      reinterpret_cast<const unsigned char*>(key.selector.c_str()),
      reinterpret_cast<const unsigned char*>(domain.c_str()),
      DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
      key.algorithm == DkimAlgorithm::kEd25519Sha256 ? DKIM_SIGN_ED25519SHA256
                                                     : DKIM_SIGN_RSASHA256,
      -1, &status);
  if (dkim == nullptr) {
    return absl::InternalError(
        absl::StrCat("dkim_sign: ", dkim_getresultstr(status)));
  }
  auto fail = [dkim](absl::string_view what, DKIM_STAT st) {
    const char* detail = dkim_geterror(dkim);
    absl::Status error = absl::InvalidArgumentError(
        absl::StrCat(what, ": ", dkim_getresultstr(st),
                     detail != nullptr ? absl::StrCat(" (", detail, ")") : ""));
    dkim_free(dkim);
    return error;
  };
  // Fed in pieces through one small buffer (dkim_chunk takes a mutable
  // pointer): no copy of the whole message per key.
  std::vector<unsigned char> piece(64 * 1024);
  for (size_t offset = 0; offset < message.size(); offset += piece.size()) {
    const size_t n = std::min(piece.size(), message.size() - offset);
    std::memcpy(piece.data(), message.data() + offset, n);
    status = dkim_chunk(dkim, piece.data(), n);
    if (status != DKIM_STAT_OK) return fail("dkim_chunk", status);
  }
  status = dkim_chunk(dkim, nullptr, 0);
  if (status != DKIM_STAT_OK) return fail("dkim_chunk", status);
  bool testkey = false;
  status = dkim_eom(dkim, &testkey);
  if (status != DKIM_STAT_OK) return fail("dkim_eom", status);
  unsigned char* header = nullptr;
  size_t length = 0;
  status =
      dkim_getsighdr_d(dkim, sizeof("DKIM-Signature: ") - 1, &header, &length);
  if (status != DKIM_STAT_OK) return fail("dkim_getsighdr_d", status);
  std::string value(reinterpret_cast<const char*>(header), length);
  dkim_free(dkim);
  // Folded with CRLF + whitespace as the content edit wants; the library may
  // fold with a bare LF.
  value = absl::StrReplaceAll(value, {{"\r\n", "\n"}});
  value = absl::StrReplaceAll(value, {{"\n", "\r\n"}});
  return value;
}

}  // namespace sinkline::sinks
