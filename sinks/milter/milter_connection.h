// One connection to a milter and a pool of them. Plain sockets with poll()
// timeouts: every connect, write and read is bounded by a deadline, and a
// connection that failed once is closed, never reused.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sinks/milter/milter_codec.h"

namespace sinkline::milter {

using Clock = std::chrono::steady_clock;

// sinkline_milter_call_seconds{stage}: how long the milter took, from the
// first octet sent to its final answer. Stages: "connect" (connect and
// option negotiation), "command" (each command answered: SMFIC_CONNECT, HELO,
// MAIL, RCPT, DATA, headers, end of headers, body chunks), "eom" (end of
// message, modifications and progress included).
void ObserveLatency(const char* stage, Clock::time_point start);

// Where the milter listens: "inet:host:port", "inet:port@host",
// "inet6:host:port", "unix:/path" or "local:/path" (Postfix's and
// Sendmail's forms).
struct MilterAddress {
  bool unix_socket = false;
  std::string host;  // or the socket path
  uint16_t port = 0;
  std::string ToString() const;
};
absl::StatusOr<MilterAddress> ParseMilterAddress(absl::string_view spec);

class Connection {
 public:
  // Connects within `timeout`.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(
      const MilterAddress& address, std::chrono::milliseconds timeout,
      size_t max_packet);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Offers `offer` and reads the milter's answer.
  absl::Status Negotiate(const Options& offer, Clock::time_point deadline);
  const Options& options() const { return options_; }

  absl::Status Send(char code, absl::string_view data,
                    Clock::time_point deadline);
  // Writes `bytes`, one or more encoded packets, in as few writes as the
  // socket takes (a command and its macros go out together: one wake-up of
  // the milter instead of two).
  absl::Status SendRaw(absl::string_view bytes, Clock::time_point deadline);
  // The next packet; UNAVAILABLE when the milter closed the connection,
  // DEADLINE_EXCEEDED at the deadline, a protocol error for a bad packet.
  absl::StatusOr<Packet> Receive(Clock::time_point deadline);

  // True once the connection served a session and came back to the pool.
  bool reused() const { return reused_; }
  void set_reused() { reused_ = true; }

 private:
  Connection(int fd, size_t max_packet) : fd_(fd), decoder_(max_packet) {}
  int fd_;
  Decoder decoder_;
  Options options_;
  bool reused_ = false;
};

struct PoolOptions {
  MilterAddress address;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds command_timeout{10000};
  size_t max_packet = kDefaultMaxPacket;
  // Idle connections kept after a session ended with SMFIC_QUIT_NC; 0 closes
  // each connection after its session (SMFIC_QUIT).
  size_t max_idle = 0;
  Options offer;
};

// Connections to one milter. Acquire gives a negotiated connection (an idle
// one when there is one); Release gives it back for the next session.
class Pool {
 public:
  explicit Pool(PoolOptions options) : options_(std::move(options)) {}
  const PoolOptions& options() const { return options_; }

  absl::StatusOr<std::unique_ptr<Connection>> Acquire();
  // The session is over. `healthy`: the connection is in a known state.
  void Release(std::unique_ptr<Connection> conn, bool healthy);
  size_t idle() const;

 private:
  const PoolOptions options_;
  mutable std::mutex mu_;
  std::deque<std::unique_ptr<Connection>> idle_;
};

}  // namespace sinkline::milter
