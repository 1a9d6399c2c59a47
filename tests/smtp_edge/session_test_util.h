// Test helpers for the session state machine: a fake broker and client
// (FakeWorld) and transcripts played whole or one byte at a time.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "smtp_edge/session.h"

namespace sinkline::edge {

// Records what the session asks for; answers bound events like a broker
// whose chains all continue (the native reply wins), unless told otherwise.
class FakeWorld : public SessionOutput {
 public:
  void Write(std::string bytes) override { written += bytes; }
  void SendEvent(const v1::Event& event, bool notify_only) override {
    events.push_back(event);
    notify.push_back(notify_only);
    if (!notify_only) pending.push_back(event);
  }
  void SendData(const std::string& tx, std::string chunk) override {
    data += chunk;
    data_tx = tx;
    chunks++;
  }
  void Close() override { closed = true; }
  void StartTls() override { tls_requested++; }

  // Answers pending events: the native reply, or `override_reply` for the
  // given type.
  void AnswerAll(Session& s) {
    while (!pending.empty()) {
      v1::Event e = pending.front();
      pending.pop_front();
      v1::EventResult r;
      r.set_sequence(e.sequence());
      *r.mutable_reply() = e.native_reply();
      if (e.type() == v1::EVENT_TYPE_EOD) {
        r.mutable_reply()->clear_lines();
        r.mutable_reply()->add_lines("Ok: queued as Q" +
                                     std::to_string(++queued));
      }
      auto it = overrides.find(e.type());
      if (it != overrides.end()) *r.mutable_reply() = it->second;
      s.OnResult(r);
    }
  }

  std::string written;
  std::vector<v1::Event> events;
  std::vector<bool> notify;
  std::deque<v1::Event> pending;
  std::map<int, v1::Reply> overrides;
  std::string data;
  std::string data_tx;
  int chunks = 0;
  int queued = 0;
  bool closed = false;
  int tls_requested = 0;
};

// The transcripts relay for the client (recipients in any domain); relay
// control has its own tests.
inline SessionPolicy Trusted() {
  SessionPolicy p;
  p.trusted_client = true;
  return p;
}

struct Transcript {
  const char* name;
  std::string input;
  std::string output;  // everything the client reads, greeting excluded
  std::vector<v1::EventType> bound = {};
};

inline std::string Play(const Transcript& t, bool byte_at_a_time, FakeWorld& w,
                        SessionLimits limits = {},
                        SessionPolicy policy = Trusted()) {
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  Session s(limits, policy, info, &w);
  v1::BindingMap map;
  for (auto e : t.bound) map.add_events(e);
  s.SetBindingMap(map);
  s.Start();
  w.AnswerAll(s);
  w.written.clear();
  if (byte_at_a_time) {
    for (char c : t.input) {
      s.Feed(absl::string_view(&c, 1));
      w.AnswerAll(s);
    }
  } else {
    s.Feed(t.input);
    w.AnswerAll(s);
  }
  return w.written;
}

inline const std::string kEhloReply =
    "250-mx.example.test Hello c.example\r\n250-PIPELINING\r\n"
    "250-SIZE "
    "52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-"
    "CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

inline v1::SessionInfo TestInfo() {
  v1::SessionInfo info;
  info.set_server_hostname("mx.example.test");
  return info;
}

}  // namespace sinkline::edge
