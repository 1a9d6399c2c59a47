// The SMTP session state machine, with no sockets: bytes in, replies and
// broker events out. One static command table drives it (verb, event, check,
// proceed); the broker round trip sits between check and proceed. While an
// event waits for the broker, input is buffered, not read further.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "sinkline/v1/session.pb.h"
#include "smtp_edge/parser.h"
#include "smtp_edge/policy.h"
#include "smtp_edge/reply.h"

namespace sinkline::edge {

// Counts a session the edge answered 421/451 because it had no broker
// (`when`: "connect", none at the greeting; "lost", the stream broke).
void CountBrokerUnavailable(const char* when);

struct SessionLimits {
  size_t max_line_length = 512;  // command line, with CRLF
  size_t max_text_line = 1000;   // message line, with CRLF
  uint64_t max_message_size = 52428800;
  int max_recipients = 100;
  size_t chunk_size = 64 * 1024;  // DataChunk size sent to the broker
  // Replies 5xx in one session before it is closed with 421 (0: no limit).
  int max_errors = 20;
  // A bare LF ends a command line, and in DATA becomes CRLF; otherwise
  // (the default) a command with one gets 500 and a message 550. A bare CR
  // is refused either way, and only <CRLF>.<CRLF> ends DATA.
  bool normalize_bare_lf = false;
  // Input that came with or after DATA before its 354 was sent: 554 and
  // close (RFC 2920 §3.1: DATA ends a pipelined group). Off here so that
  // transcripts may come whole; the server's flag turns it on by default.
  bool reject_improper_pipelining = false;
};

// What the client may do beyond plain SMTP; the server fills it in per
// connection. The default offers nothing and relays for nobody.
struct SessionPolicy {
  // STARTTLS is offered (a certificate is configured) until TLS is active.
  bool starttls = false;
  // AUTH PLAIN and LOGIN are offered over TLS when set; not owned.
  const Credentials* credentials = nullptr;
  // Recipient domains this edge takes mail for, lower-case. Any other
  // domain is relaying: only for trusted or authenticated clients.
  std::vector<std::string> accepted_domains;
  // The client is in a trusted network and may relay.
  bool trusted_client = false;
  // Recipients with sender-specified routing (a local part with '%', '!'
  // or a quoted '@': sinkline::HasSourceRouting) are taken from clients
  // neither trusted nor authenticated; refused (550 5.7.1) when false.
  bool allow_untrusted_routing = false;
};

// What the session asks of the world around it.
class SessionOutput {
 public:
  virtual ~SessionOutput() = default;
  // Bytes for the client (replies, in order).
  virtual void Write(std::string bytes) = 0;
  // An event for the broker; when !notify_only the session waits for
  // OnResult() with the same sequence.
  virtual void SendEvent(const v1::Event& event, bool notify_only) = 0;
  // Message content for the broker.
  virtual void SendData(const std::string& transaction_id,
                        std::string chunk) = 0;
  // Close the connection once written bytes are out.
  virtual void Close() = 0;
  // Start the TLS handshake once written bytes are out (the 220 to
  // STARTTLS), then call Session::OnTlsStarted.
  virtual void StartTls() {}
};

class Session {
 public:
  Session(SessionLimits limits, v1::SessionInfo info, SessionOutput* out)
      : Session(limits, SessionPolicy{}, std::move(info), out) {}
  Session(SessionLimits limits, SessionPolicy policy, v1::SessionInfo info,
          SessionOutput* out);

  // Which events have bindings (from the broker); may change at any time.
  void SetBindingMap(const v1::BindingMap& map);
  // Sends the greeting (or the CONNECT event first, when bound). A client
  // that sent anything before (Feed before Start) gets 554 instead.
  void Start();
  // Input from the client.
  void Feed(absl::string_view bytes);
  // The edge shuts down: a session outside a transaction gets 421 now (or
  // at its next command), one inside may finish its transaction first.
  void SetDraining();
  // The broker's answer to the pending event.
  void OnResult(const v1::EventResult& result);
  // The broker stream broke or timed out: the pending command gets 451,
  // the next one 421, and the session closes. Never 250 without a broker.
  void OnBrokerLost();
  // The TLS handshake after STARTTLS completed: the session starts over
  // (RFC 3207 §4.2: the client must EHLO again).
  void OnTlsStarted(const v1::TlsState& tls);

  // STARTTLS was answered 220: the connection must hand the socket to TLS
  // before it reads again; input until then is discarded.
  bool starting_tls() const { return starting_tls_; }
  bool waiting() const { return pending_.has_value(); }
  // Reading a message's content (after 354, or a BDAT chunk's octets).
  bool in_content() const {
    return mode_ == Mode::kData || mode_ == Mode::kBdat;
  }
  struct CommandSpec;
  // What the pending event waits for: the command and its native reply.
  struct Pending {
    uint64_t sequence = 0;
    const CommandSpec* spec = nullptr;
    Command command;
    edge::Reply native;
  };
  bool closed() const { return closed_; }
  bool in_transaction() const { return mail_from_.has_value(); }
  // Greeted and between transactions, with nothing pending or buffered:
  // no command waits, no AUTH exchange or STARTTLS under way.
  bool idle() const {
    return started_ && !closed_ && mode_ == Mode::kCommand &&
           !pending_.has_value() && !mail_from_.has_value() && in_.empty() &&
           !starting_tls_;
  }
  size_t buffered() const { return in_.size(); }
  const std::string& state_name() const;
  const v1::SessionInfo& info() const { return info_; }

 private:
  enum class Mode { kCommand, kData, kAuth, kBdat };

  void Process();
  size_t CommandLineLimit() const;
  void HandleLine(absl::string_view line);
  void HandleCommand(const Command& cmd);
  bool ProcessData();  // false: needs more input
  void DataLine(absl::string_view piece, bool complete);
  void EndOfData();
  void ResetTransaction();
  // Draining and between transactions: 421 and close.
  bool CloseIfDrained();
  // Resets the content state for a new message (DATA or first BDAT).
  void StartContent();
  bool Smtputf8() const;  // the transaction's MAIL had SMTPUTF8
  bool ProcessBdat();     // false: needs more input
  void BdatBytes(absl::string_view piece);
  void EndOfChunk();
  void AuthResponse(absl::string_view line);
  // Checks the credentials and raises the AUTH event (identity only).
  void FinishAuth(const std::string& authzid, const std::string& user,
                  const std::string& password);
  bool RelayAllowed(const std::string& address) const;
  // In a trusted network or authenticated: may relay and route.
  bool TrustedClient() const;
  void Reply(const edge::Reply& r);
  void CloseAfter(const edge::Reply& r);
  bool Bound(v1::EventType type, const std::string& verb) const;
  v1::Event MakeEvent(v1::EventType type, const Command& cmd,
                      const edge::Reply& native);
  void Dispatch(const CommandSpec* spec, const Command& cmd, v1::Event event,
                const edge::Reply& native);
  void Proceed(const Pending& p, const edge::Reply& resolved,
               bool close_session);

  // Checks and proceeds per verb.
  friend struct CommandTable;

  const SessionLimits limits_;
  const SessionPolicy policy_;
  v1::SessionInfo info_;
  SessionOutput* const out_;
  v1::BindingMap bindings_;
  std::vector<bool> bound_;  // by EventType

  std::string in_;
  Mode mode_ = Mode::kCommand;
  bool discarding_line_ = false;  // a command line over the limit
  bool closed_ = false;
  bool started_ = false;
  bool broker_lost_ = false;
  bool starting_tls_ = false;
  bool draining_ = false;
  int errors_ = 0;  // 5xx replies so far
  // What the next reply answers, for sinkline_edge_commands_total: a verb
  // of the command table, UNKNOWN, CONNECT (the greeting) or EOD (the reply
  // after the message).
  const char* metric_verb_ = "CONNECT";
  void CountReply(int code) const;

  // An AUTH exchange in progress (Mode::kAuth) or just finished.
  struct AuthAttempt {
    std::string mechanism;  // "PLAIN" or "LOGIN"
    std::string user;       // LOGIN: the user name once given
    bool got_user = false;
    bool ok = false;  // the credentials matched
    // AUTH with an initial response: handled like the first answer.
    bool has_initial = false;
    std::string initial;
  };
  AuthAttempt auth_;
  uint64_t sequence_ = 0;
  std::optional<Pending> pending_;

  // The transaction: in one iff a sender is set.
  std::optional<std::string> mail_from_;
  std::vector<v1::EsmtpParam> mail_params_;
  std::vector<v1::Recipient> recipients_;
  std::string transaction_id_;
  bool bdat_used_ = false;  // the transaction's content comes by BDAT

  // The BDAT chunk being read.
  struct BdatChunk {
    uint64_t size = 0;
    uint64_t remaining = 0;
    bool last = false;
    edge::Reply refusal;  // read the octets, then answer this
  };
  BdatChunk bdat_;

  // DATA state.
  std::string chunk_;
  uint64_t message_size_ = 0;
  bool line_start_ = true;
  bool prev_crlf_ = true;
  char last_char_ = '\n';
  size_t line_len_ = 0;
  bool bad_line_ending_ = false;
  bool line_too_long_ = false;
  bool too_big_ = false;
};

}  // namespace sinkline::edge
