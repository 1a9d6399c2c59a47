// What a connection owes its client, written one write at a time and in
// order: the session's replies and the watchdog's 421 alike go through the
// one queue of a connection, and only its writer writes to the socket (or
// the TLS stream over it, where two writes under way at once would mix
// their records). No I/O here: the connection's writer takes the next bytes,
// writes them, and says when the write is done.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace sinkline::edge {

class OutputQueue {
 public:
  // Bytes to write after everything queued or under way. Ignored once the
  // queue is sealed.
  void Append(absl::string_view bytes);
  // The last bytes this connection writes (a 421 before close): queued
  // after what waits, and nothing is queued after them.
  void AppendLast(absl::string_view bytes);

  // Starts the next write: the bytes to write now, or "" when a write is
  // already under way or nothing waits. Until Done(), writing() is true
  // and Take() returns "".
  std::string Take();
  // The write Take() started ended (written or failed).
  void Done() { writing_ = false; }

  bool writing() const { return writing_; }
  bool empty() const { return pending_.empty(); }
  bool sealed() const { return sealed_; }

 private:
  std::string pending_;
  bool writing_ = false;
  bool sealed_ = false;
};

}  // namespace sinkline::edge
