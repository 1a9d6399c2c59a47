#include "sink_broker/ids.h"

#include <openssl/rand.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"

namespace sinkline::broker {

namespace {
constexpr char kBase36[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
}  // namespace

std::string NewQueueId() {
  uint64_t us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  std::string id(16, '0');
  for (int i = 9; i >= 0; --i) {
    id[i] = kBase36[us % 36];
    us /= 36;
  }
  unsigned char rnd[6];
  if (RAND_bytes(rnd, sizeof rnd) != 1) std::abort();  // no CSPRNG
  for (int i = 0; i < 6; ++i) id[10 + i] = kBase36[rnd[i] % 36];
  return id;
}

bool ValidWireId(absl::string_view id) {
  if (id.empty() || id.size() > 64 || id.front() == '.') return false;
  for (const char c : id) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
                    (c >= 'a' && c <= 'z') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string NewToken() {
  unsigned char rnd[32];
  if (RAND_bytes(rnd, sizeof rnd) != 1) std::abort();  // no CSPRNG: no tokens
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(rnd), sizeof rnd));
}

}  // namespace sinkline::broker
