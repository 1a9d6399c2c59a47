#include "sinks/milter/milter_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "sinkline/common/metrics.h"

namespace sinkline::milter {
namespace {

int MillisLeft(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - Clock::now());
  if (left.count() <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left.count(), 1 << 30));
}

// Waits until `fd` is ready for `events` or the deadline passes.
absl::Status WaitFor(int fd, short events, Clock::time_point deadline,
                     absl::string_view what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int ms = MillisLeft(deadline);
    if (ms == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("milter did not ", what, " in time"));
    }
    const int n = ::poll(&p, 1, ms);
    if (n > 0) return absl::OkStatus();
    if (n < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll: ", strerror(errno)));
    }
  }
}

absl::StatusOr<uint16_t> Port(absl::string_view s) {
  uint32_t port = 0;
  if (!absl::SimpleAtoi(s, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port \"", s, "\""));
  }
  return static_cast<uint16_t>(port);
}

}  // namespace

void ObserveLatency(const char* stage, Clock::time_point start) {
  // A dozen answers per message: the three series are looked up once.
  auto series = [](const char* name) -> Histogram& {
    return MetricsRegistry::Default().GetHistogram(
        "sinkline_milter_call_seconds",
        "Time the milter took to answer, by stage.", {{"stage", name}});
  };
  static Histogram& connect = series("connect");
  static Histogram& command = series("command");
  static Histogram& eom = series("eom");
  const absl::string_view s = stage;
  Histogram& h = s == "connect"   ? connect
                 : s == "eom"     ? eom
                 : s == "command" ? command
                                  : series(stage);
  h.Observe(std::chrono::duration<double>(Clock::now() - start).count());
}

std::string MilterAddress::ToString() const {
  return unix_socket ? absl::StrCat("unix:", host)
                     : absl::StrCat("inet:", host, ":", port);
}

absl::StatusOr<MilterAddress> ParseMilterAddress(absl::string_view spec) {
  MilterAddress a;
  absl::string_view rest = spec;
  if (absl::ConsumePrefix(&rest, "unix:") ||
      absl::ConsumePrefix(&rest, "local:")) {
    if (rest.empty() || rest.size() >= sizeof(sockaddr_un::sun_path)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad unix socket path in \"", spec, "\""));
    }
    a.unix_socket = true;
    a.host = std::string(rest);
    return a;
  }
  if (!absl::ConsumePrefix(&rest, "inet:") &&
      !absl::ConsumePrefix(&rest, "inet6:")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "milter address \"", spec, "\": want inet:host:port or unix:/path"));
  }
  // Sendmail's "port@host", or "host:port" / "[v6]:port".
  if (const size_t at = rest.find('@'); at != absl::string_view::npos) {
    auto port = Port(rest.substr(0, at));
    if (!port.ok()) return port.status();
    a.port = *port;
    a.host = std::string(rest.substr(at + 1));
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("milter address \"", spec, "\" has no port"));
    }
    auto port = Port(rest.substr(colon + 1));
    if (!port.ok()) return port.status();
    a.port = *port;
    absl::string_view host = rest.substr(0, colon);
    if (absl::ConsumePrefix(&host, "[")) absl::ConsumeSuffix(&host, "]");
    a.host = std::string(host);
  }
  if (a.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("milter address \"", spec, "\" has no host"));
  }
  return a;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const MilterAddress& address, std::chrono::milliseconds timeout,
    size_t max_packet) {
  const auto deadline = Clock::now() + timeout;
  auto try_connect = [&](int family, const sockaddr* sa,
                         socklen_t len) -> absl::StatusOr<int> {
    int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return absl::UnavailableError(strerror(errno));
    if (family != AF_UNIX) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (::connect(fd, sa, len) != 0) {
      if (errno != EINPROGRESS && errno != EAGAIN) {
        const std::string why = strerror(errno);
        ::close(fd);
        return absl::UnavailableError(why);
      }
      auto s = WaitFor(fd, POLLOUT, deadline, "accept the connection");
      int err = 0;
      socklen_t err_len = sizeof err;
      if (s.ok()) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len);
      if (!s.ok() || err != 0) {
        ::close(fd);
        return s.ok() ? absl::UnavailableError(strerror(err)) : s;
      }
    }
    return fd;
  };
  absl::StatusOr<int> fd = absl::UnavailableError("no address");
  if (address.unix_socket) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, address.host.data(), address.host.size());
    fd = try_connect(AF_UNIX, reinterpret_cast<sockaddr*>(&sun), sizeof sun);
  } else {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(address.port);
    if (int rc =
            ::getaddrinfo(address.host.c_str(), port.c_str(), &hints, &res);
        rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("resolve ", address.host, ": ", gai_strerror(rc)));
    }
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      fd = try_connect(ai->ai_family, ai->ai_addr, ai->ai_addrlen);
      if (fd.ok()) break;
    }
    ::freeaddrinfo(res);
  }
  if (!fd.ok()) {
    return absl::Status(fd.status().code(),
                        absl::StrCat("connect to milter ", address.ToString(),
                                     ": ", fd.status().message()));
  }
  return std::unique_ptr<Connection>(new Connection(*fd, max_packet));
}

Connection::~Connection() { ::close(fd_); }

absl::Status Connection::Send(char code, absl::string_view data,
                              Clock::time_point deadline) {
  return SendRaw(Encode(code, data), deadline);
}

absl::Status Connection::SendRaw(absl::string_view bytes,
                                 Clock::time_point deadline) {
  absl::string_view left = bytes;
  while (!left.empty()) {
    const ssize_t n = ::send(fd_, left.data(), left.size(), MSG_NOSIGNAL);
    if (n > 0) {
      left.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (auto s = WaitFor(fd_, POLLOUT, deadline, "read its input"); !s.ok())
        return s;
      continue;
    }
    return absl::UnavailableError(
        absl::StrCat("write to milter: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Packet> Connection::Receive(Clock::time_point deadline) {
  char buf[16384];
  for (;;) {
    auto next = decoder_.Next();
    if (!next.ok()) return next.status();
    if (next->has_value()) return std::move(**next);
    if (auto s = WaitFor(fd_, POLLIN, deadline, "answer"); !s.ok()) return s;
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      decoder_.Feed(absl::string_view(buf, static_cast<size_t>(n)));
    } else if (n == 0) {
      return absl::UnavailableError("the milter closed the connection");
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat("read from milter: ", strerror(errno)));
    }
  }
}

absl::Status Connection::Negotiate(const Options& offer,
                                   Clock::time_point deadline) {
  if (auto s = Send(cmd::kOptneg, EncodeOptneg(offer), deadline); !s.ok())
    return s;
  auto p = Receive(deadline);
  if (!p.ok()) return p.status();
  if (p->code != cmd::kOptneg) {
    return ProtocolError(absl::StrCat("answer to OPTNEG is '",
                                      absl::CEscape(std::string(1, p->code)),
                                      "', want 'O'"));
  }
  auto got = DecodeOptneg(p->data, offer);
  if (!got.ok()) return got.status();
  options_ = *got;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Connection>> Pool::Acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      auto conn = std::move(idle_.front());
      idle_.pop_front();
      return conn;
    }
  }
  const auto start = Clock::now();
  auto conn = Connection::Open(options_.address, options_.connect_timeout,
                               options_.max_packet);
  if (!conn.ok()) return conn.status();
  if (auto s = (*conn)->Negotiate(options_.offer,
                                  Clock::now() + options_.command_timeout);
      !s.ok()) {
    return s;
  }
  ObserveLatency("connect", start);
  return conn;
}

void Pool::Release(std::unique_ptr<Connection> conn, bool healthy) {
  if (!conn) return;
  const auto deadline = Clock::now() + options_.command_timeout;
  if (healthy && options_.max_idle > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < options_.max_idle &&
        conn->Send(cmd::kQuitNc, "", deadline).ok()) {
      conn->set_reused();
      idle_.push_back(std::move(conn));
      return;
    }
  }
  if (healthy) (void)conn->Send(cmd::kQuit, "", deadline);
}

size_t Pool::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_.size();
}

}  // namespace sinkline::milter
