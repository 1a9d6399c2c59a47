#include "sink_broker/affinity.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::broker {
namespace {

uint64_t Fnv1a(absl::string_view a, absl::string_view b) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](absl::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(a);
  mix(absl::string_view("\0", 1));
  mix(b);
  // A final avalanche so that similar inputs spread (splitmix64).
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

// "host:port" or "[v6]:port" → host, port.
bool HostPort(absl::string_view s, std::string* host, std::string* port) {
  const size_t colon = s.rfind(':');
  if (colon == absl::string_view::npos || colon + 1 == s.size()) return false;
  absl::string_view h = s.substr(0, colon);
  if (absl::ConsumePrefix(&h, "[")) absl::ConsumeSuffix(&h, "]");
  if (h.empty()) return false;
  *host = std::string(h);
  *port = std::string(s.substr(colon + 1));
  return true;
}

std::string AddressTarget(const std::string& ip, const std::string& port) {
  return ip.find(':') == std::string::npos
             ? absl::StrCat("ipv4:", ip, ":", port)
             : absl::StrCat("ipv6:[", ip, "]:", port);
}

}  // namespace

std::vector<std::string> SplitTarget(absl::string_view target, bool resolve) {
  std::vector<std::string> out;
  absl::string_view rest = target;
  if (absl::ConsumePrefix(&rest, "ipv4:") ||
      absl::ConsumePrefix(&rest, "ipv6:")) {
    const absl::string_view scheme = target.substr(0, 5);
    for (absl::string_view a : absl::StrSplit(rest, ',', absl::SkipEmpty())) {
      out.push_back(absl::StrCat(scheme, a));
    }
  } else if (absl::StartsWith(target, "unix:") ||
             absl::StartsWith(target, "unix-abstract:")) {
    out.emplace_back(target);
  } else {
    // "dns:///host:port", "dns://authority/host:port" or "host:port".
    absl::string_view name = rest;
    if (absl::ConsumePrefix(&name, "dns:")) {
      if (absl::ConsumePrefix(&name, "//")) {
        const size_t slash = name.find('/');
        name = slash == absl::string_view::npos ? name : name.substr(slash + 1);
      }
    }
    std::string host, port;
    if (resolve && HostPort(name, &host, &port)) {
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) == 0) {
        for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
          char buf[INET6_ADDRSTRLEN] = {};
          const void* addr =
              ai->ai_family == AF_INET
                  ? static_cast<const void*>(
                        &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
                  : static_cast<const void*>(
                        &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)
                             ->sin6_addr);
          if (::inet_ntop(ai->ai_family, addr, buf, sizeof buf) != nullptr) {
            out.push_back(AddressTarget(buf, port));
          }
        }
        ::freeaddrinfo(res);
      }
    }
    if (out.empty()) out.emplace_back(target);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string PickReplica(const std::vector<std::string>& replicas,
                        absl::string_view session_id) {
  std::string best;
  uint64_t best_weight = 0;
  for (const auto& r : replicas) {
    const uint64_t w = Fnv1a(r, session_id);
    if (best.empty() || w > best_weight || (w == best_weight && r < best)) {
      best = r;
      best_weight = w;
    }
  }
  return best;
}

std::string AffinityTarget(absl::string_view target,
                           absl::string_view session_id,
                           std::chrono::seconds ttl) {
  struct Entry {
    std::vector<std::string> replicas;
    std::chrono::steady_clock::time_point resolved;
  };
  static std::mutex mu;
  static auto* cache = new std::map<std::string, Entry, std::less<>>();
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::string> replicas;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(target);
    if (it != cache->end() && now - it->second.resolved < ttl) {
      replicas = it->second.replicas;
    }
  }
  if (replicas.empty()) {
    replicas = SplitTarget(target);
    std::lock_guard<std::mutex> lock(mu);
    (*cache)[std::string(target)] = Entry{replicas, now};
  }
  return PickReplica(replicas, session_id);
}

}  // namespace sinkline::broker
