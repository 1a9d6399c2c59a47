#include "sink_broker/relay_dns.h"

#include <ares.h>
#include <arpa/nameser.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace {

using tcp = boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;

Counter& LookupsCounter(const char* result) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_relay_dns_lookups_total",
      "Resolutions of the next hop: ok, failed (no such name, no address, "
      "server failure) or timeout (past --relay-dns-timeout-ms).",
      {{"result", result}});
}

bool IsIpLiteral(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  return !ec;
}

bool IsLocalhost(const std::string& host) {
  const std::string h = absl::AsciiStrToLower(host);
  return h == "localhost" || absl::EndsWith(h, ".localhost");
}

bool ValidPort(absl::string_view port) {
  int n = 0;
  return !port.empty() && port.size() <= 5 && absl::SimpleAtoi(port, &n) &&
         n > 0 && n < 65536;
}

// A c-ares channel with one resolution's deadline: queries are sent, then
// Run() polls the channel's sockets until every query answered or the
// deadline passed (then the rest are cancelled).
class Lookup {
 public:
  Lookup(const DnsOptions& options, Clock::time_point deadline)
      : deadline_(deadline) {
    static std::once_flag once;
    std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
    ares_options opts{};
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS;
    // Each try gets a part of the deadline, so a lost datagram is sent
    // again before the deadline ends the lookup.
    opts.timeout =
        static_cast<int>(std::max<int64_t>(50, options.timeout.count() / 3));
    opts.tries = 3;
    char lookups[] = "fb";  // the hosts file, then DNS
    opts.lookups = lookups;
    status_ = ares_init_options(&channel_, &opts, mask);
    initialized_ = status_ == ARES_SUCCESS;
    if (status_ == ARES_SUCCESS && !options.servers.empty()) {
      status_ = ares_set_servers_ports_csv(
          channel_, absl::StrJoin(options.servers, ",").c_str());
    }
  }
  ~Lookup() {
    if (initialized_) ares_destroy(channel_);
  }
  Lookup(const Lookup&) = delete;
  Lookup& operator=(const Lookup&) = delete;

  absl::Status init_status() const {
    if (status_ == ARES_SUCCESS) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("DNS resolver: ", ares_strerror(status_)));
  }

  struct MxResult {
    int status = ARES_ECANCELLED;
    std::vector<std::pair<int, std::string>> hosts;  // preference, name
  };
  struct AddrResult {
    int status = ARES_ECANCELLED;
    std::vector<tcp::endpoint> endpoints;
  };

  void QueryMx(const std::string& name, MxResult* out) {
    ++pending_;
    ares_query(channel_, name.c_str(), ns_c_in, ns_t_mx, &Lookup::OnMx,
               new MxCall{this, out});
  }

  void QueryAddresses(const std::string& name, const std::string& port,
                      AddrResult* out) {
    ++pending_;
    ares_addrinfo_hints hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = ARES_AI_NUMERICSERV;
    ares_getaddrinfo(channel_, name.c_str(), port.c_str(), &hints,
                     &Lookup::OnAddr, new AddrCall{this, out});
  }

  // false: the deadline passed (every query still open was cancelled).
  bool Run() {
    while (pending_ > 0) {
      const auto now = Clock::now();
      if (now >= deadline_) {
        ares_cancel(channel_);  // the callbacks run, with ARES_ECANCELLED
        return false;
      }
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      const int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
      pollfd fds[ARES_GETSOCK_MAXNUM];
      int n = 0;
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short events = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) events |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i)) events |= POLLOUT;
        if (events == 0) continue;
        fds[n].fd = socks[i];
        fds[n].events = events;
        fds[n].revents = 0;
        ++n;
      }
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          deadline_ - now);
      timeval max_tv{static_cast<time_t>(left.count() / 1000000),
                     static_cast<suseconds_t>(left.count() % 1000000)};
      timeval tv{};
      const timeval* next = ares_timeout(channel_, &max_tv, &tv);
      const int wait_ms =
          static_cast<int>(next->tv_sec * 1000 + (next->tv_usec + 999) / 1000);
      const int ready = ::poll(fds, n, std::max(0, wait_ms));
      if (ready <= 0) {
        ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
        continue;
      }
      for (int i = 0; i < n; ++i) {
        const bool r = fds[i].revents & (POLLIN | POLLERR | POLLHUP);
        const bool w = fds[i].revents & POLLOUT;
        if (!r && !w) continue;
        ares_process_fd(channel_, r ? fds[i].fd : ARES_SOCKET_BAD,
                        w ? fds[i].fd : ARES_SOCKET_BAD);
      }
    }
    return true;
  }

 private:
  struct MxCall {
    Lookup* lookup;
    MxResult* out;
  };
  struct AddrCall {
    Lookup* lookup;
    AddrResult* out;
  };

  static void OnMx(void* arg, int status, int, unsigned char* abuf, int alen) {
    auto* call = static_cast<MxCall*>(arg);
    auto* out = call->out;
    out->status = status;
    if (status == ARES_SUCCESS) {
      ares_mx_reply* mx = nullptr;
      out->status = ares_parse_mx_reply(abuf, alen, &mx);
      for (auto* m = mx; m; m = m->next) {
        out->hosts.emplace_back(m->priority, m->host);
      }
      if (mx) ares_free_data(mx);
    }
    --call->lookup->pending_;
    delete call;
  }

  static void OnAddr(void* arg, int status, int, ares_addrinfo* res) {
    auto* call = static_cast<AddrCall*>(arg);
    call->out->status = status;
    if (status == ARES_SUCCESS && res) {
      for (auto* node = res->nodes; node; node = node->ai_next) {
        tcp::endpoint ep;
        if (node->ai_addrlen <= ep.capacity()) {
          std::memcpy(ep.data(), node->ai_addr, node->ai_addrlen);
          ep.resize(node->ai_addrlen);
          call->out->endpoints.push_back(ep);
        }
      }
    }
    if (res) ares_freeaddrinfo(res);
    --call->lookup->pending_;
    delete call;
  }

  const Clock::time_point deadline_;
  ares_channel channel_ = nullptr;
  bool initialized_ = false;
  int status_ = ARES_SUCCESS;
  int pending_ = 0;
};

std::string AresError(int status) {
  if (status == ARES_ECANCELLED) return "cancelled at the deadline";
  return ares_strerror(status);
}

}  // namespace

absl::StatusOr<NextHopSpec> ParseNextHop(absl::string_view spec) {
  NextHopSpec out;
  absl::string_view s = spec;
  if (absl::ConsumePrefix(&s, "dns:")) out.mx = true;
  if (absl::ConsumePrefix(&s, "[")) {
    const auto close = s.find(']');
    if (close == absl::string_view::npos || close == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("next hop ", spec, ": no closing ]"));
    }
    out.host = std::string(s.substr(0, close));
    out.mx = false;
    s.remove_prefix(close + 1);
    if (!s.empty()) {
      if (!absl::ConsumePrefix(&s, ":") || !ValidPort(s)) {
        return absl::InvalidArgumentError(
            absl::StrCat("next hop ", spec, ": bad port after ]"));
      }
      out.port = std::string(s);
    }
  } else {
    if (const auto colon = s.rfind(':'); colon != absl::string_view::npos) {
      if (!ValidPort(s.substr(colon + 1)) ||
          s.substr(0, colon).find(':') != absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "next hop ", spec, ": bad port (IPv6 literals go in [])"));
      }
      out.port = std::string(s.substr(colon + 1));
      s = s.substr(0, colon);
    }
    out.host = std::string(s);
    if (IsIpLiteral(out.host) || IsLocalhost(out.host)) out.mx = false;
  }
  if (out.host.empty() ||
      out.host.find_first_of(" \t\r\n/") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("next hop ", spec, ": bad host"));
  }
  return out;
}

absl::StatusOr<std::vector<RelayTarget>> ResolveNextHop(
    const NextHopSpec& hop, const DnsOptions& options) {
  int port = 25;
  (void)absl::SimpleAtoi(hop.port, &port);
  if (IsIpLiteral(hop.host)) {
    return std::vector<RelayTarget>{
        {hop.host,
         {tcp::endpoint(boost::asio::ip::make_address(hop.host),
                        static_cast<unsigned short>(port))}}};
  }
  const auto deadline = Clock::now() + options.timeout;
  Lookup lookup(options, deadline);
  if (auto st = lookup.init_status(); !st.ok()) {
    LookupsCounter("failed").Inc();
    return st;
  }
  const std::string what = absl::StrCat("next hop ", hop.host);
  auto timed_out = [&](const std::string& step) {
    LookupsCounter("timeout").Inc();
    return absl::UnavailableError(
        absl::StrCat(what, ": DNS ", step, " timed out after ",
                     options.timeout.count(), " ms (--relay-dns-timeout-ms)"));
  };

  std::vector<std::string> names;
  if (hop.mx) {
    Lookup::MxResult mx;
    lookup.QueryMx(hop.host, &mx);
    if (!lookup.Run()) return timed_out("MX lookup");
    if (mx.status == ARES_SUCCESS) {
      std::stable_sort(
          mx.hosts.begin(), mx.hosts.end(),
          [](const auto& a, const auto& b) { return a.first < b.first; });
      for (const auto& [pref, name] : mx.hosts) {
        // RFC 7505's null MX ("." or empty) says the domain takes no mail.
        if (!name.empty() && name != ".") names.push_back(name);
      }
      if (names.empty()) {
        LookupsCounter("failed").Inc();
        return absl::UnavailableError(
            absl::StrCat(what, ": null MX, the domain accepts no mail"));
      }
    } else if (mx.status != ARES_ENODATA && mx.status != ARES_ENOTFOUND) {
      LookupsCounter("failed").Inc();
      return absl::UnavailableError(
          absl::StrCat(what, ": DNS MX lookup: ", AresError(mx.status)));
    }
  }
  if (names.empty()) names.push_back(hop.host);  // no MX: the host itself
  constexpr size_t kMaxHosts = 5;
  if (names.size() > kMaxHosts) names.resize(kMaxHosts);

  std::vector<Lookup::AddrResult> addrs(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    lookup.QueryAddresses(names[i], hop.port, &addrs[i]);
  }
  if (!lookup.Run()) return timed_out("address lookup");
  std::vector<RelayTarget> out;
  std::vector<std::string> errors;
  for (size_t i = 0; i < names.size(); ++i) {
    if (addrs[i].status == ARES_SUCCESS && !addrs[i].endpoints.empty()) {
      out.push_back({names[i], std::move(addrs[i].endpoints)});
    } else {
      errors.push_back(absl::StrCat(names[i], ": ",
                                    addrs[i].status == ARES_SUCCESS
                                        ? "no address"
                                        : AresError(addrs[i].status)));
    }
  }
  if (out.empty()) {
    LookupsCounter("failed").Inc();
    return absl::UnavailableError(absl::StrCat(
        what, ": DNS address lookup: ", absl::StrJoin(errors, "; ")));
  }
  LookupsCounter("ok").Inc();
  return out;
}

}  // namespace sinkline::broker
