// The milter wire codec (protocol version 6, as Sendmail's libmilter and
// Postfix's milter8.c speak it): packet framing, the MTA's commands, and the
// milter's replies decoded into values. No I/O: the decoder is fed bytes and
// answers need-more / a packet / an error, and every length is bounded before
// anything is allocated.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkline::milter {

// Commands the MTA sends (SMFIC_*).
namespace cmd {
inline constexpr char kAbort = 'A';
inline constexpr char kBody = 'B';
inline constexpr char kConnect = 'C';
inline constexpr char kMacro = 'D';
inline constexpr char kBodyEob = 'E';
inline constexpr char kHelo = 'H';
inline constexpr char kQuitNc = 'K';
inline constexpr char kHeader = 'L';
inline constexpr char kMail = 'M';
inline constexpr char kEoh = 'N';
inline constexpr char kOptneg = 'O';
inline constexpr char kQuit = 'Q';
inline constexpr char kRcpt = 'R';
inline constexpr char kData = 'T';
inline constexpr char kUnknown = 'U';
}  // namespace cmd

// Replies the milter sends (SMFIR_*).
namespace reply {
inline constexpr char kAddRcpt = '+';
inline constexpr char kDelRcpt = '-';
inline constexpr char kAddRcptPar = '2';
inline constexpr char kShutdown = '6';
inline constexpr char kAccept = 'a';
inline constexpr char kReplBody = 'b';
inline constexpr char kContinue = 'c';
inline constexpr char kDiscard = 'd';
inline constexpr char kChgFrom = 'e';
inline constexpr char kConnFail = 'f';
inline constexpr char kAddHeader = 'h';
inline constexpr char kInsHeader = 'i';
inline constexpr char kSetSymList = 'l';
inline constexpr char kChgHeader = 'm';
inline constexpr char kProgress = 'p';
inline constexpr char kQuarantine = 'q';
inline constexpr char kReject = 'r';
inline constexpr char kSkip = 's';
inline constexpr char kTempfail = 't';
inline constexpr char kReplyCode = 'y';
}  // namespace reply

// Actions a milter may take (SMFIF_*), negotiated at OPTNEG.
enum Action : uint32_t {
  kAddHdrs = 0x01,
  kChgBody = 0x02,
  kAddRcpt = 0x04,
  kDelRcpt = 0x08,
  kChgHdrs = 0x10,
  kQuarantine = 0x20,
  kChgFrom = 0x40,
  kAddRcptPar = 0x80,
  kSetSymList = 0x100,
};
inline constexpr uint32_t kAllActions = 0x1ff;

// Protocol steps a milter can opt out of (SMFIP_NO*) or answer without a
// reply (SMFIP_NR_*), and other protocol flags.
enum Protocol : uint32_t {
  kNoConnect = 0x01,
  kNoHelo = 0x02,
  kNoMail = 0x04,
  kNoRcpt = 0x08,
  kNoBody = 0x10,
  kNoHdrs = 0x20,
  kNoEoh = 0x40,
  kNrHdr = 0x80,
  kNoUnknown = 0x100,
  kNoData = 0x200,
  kSkip = 0x400,
  kRcptRej = 0x800,
  kNrConn = 0x1000,
  kNrHelo = 0x2000,
  kNrMail = 0x4000,
  kNrRcpt = 0x8000,
  kNrData = 0x10000,
  kNrUnkn = 0x20000,
  kNrEoh = 0x40000,
  kNrBody = 0x80000,
  kHdrLeadSpc = 0x100000,
};
// Every protocol flag this bridge understands and honours.
inline constexpr uint32_t kAllProtocol = 0x1fffff;

inline constexpr uint32_t kVersion = 6;

// Macro stages (SMFIM_*), the index of SMFIR_SETSYMLIST / OPTNEG lists.
enum class Stage : uint32_t {
  kConnect = 0,
  kHelo = 1,
  kMail = 2,
  kRcpt = 3,
  kData = 4,
  kEom = 5,
  kEoh = 6,
};
inline constexpr uint32_t kStages = 7;

// The largest body chunk the MTA sends (libmilter's MILTER_CHUNK_SIZE).
inline constexpr size_t kBodyChunk = 65535;
// The largest packet accepted from a milter by default: a replaced body
// chunk of 1 MB (SMFIP_MDS_1M) and room for its header.
inline constexpr size_t kDefaultMaxPacket = 1024 * 1024 + 64;

// A codec error: a milter that breaks the protocol. Carries the
// FAILED_PRECONDITION code with a "milter protocol:" message.
absl::Status ProtocolError(absl::string_view what);
bool IsProtocolError(const absl::Status& status);

// One packet: command or reply letter and its data.
struct Packet {
  char code = 0;
  std::string data;
};

// Frames one packet: 4-octet big-endian length (code + data), code, data.
std::string Encode(char code, absl::string_view data);
// The same, appended to `out` (several packets go out in one write).
void AppendPacket(std::string& out, char code, absl::string_view data);

// Incremental packet decoder; feed it bytes as they arrive.
class Decoder {
 public:
  explicit Decoder(size_t max_packet = kDefaultMaxPacket)
      : max_packet_(max_packet) {}
  void Feed(absl::string_view bytes) {
    buffer_.append(bytes.data(), bytes.size());
  }
  // A whole packet, std::nullopt when more bytes are needed, or a protocol
  // error (zero or oversized length) once the header is in.
  absl::StatusOr<std::optional<Packet>> Next();
  size_t buffered() const { return buffer_.size(); }

 private:
  size_t max_packet_;
  std::string buffer_;
};

// Option negotiation. The MTA offers; the milter answers with what it takes
// and optionally the macros it wants per stage.
struct Options {
  uint32_t version = kVersion;
  uint32_t actions = kAllActions;
  uint32_t protocol = kAllProtocol;
  // Stage → space-separated macro names (only when the milter sent lists).
  std::map<uint32_t, std::string> macros;
};
std::string EncodeOptneg(const Options& offer);
// Decodes the milter's OPTNEG answer and checks it against `offer`: a version
// below 2 or above ours, actions or protocol flags we did not offer, or a
// malformed macro list is an error.
absl::StatusOr<Options> DecodeOptneg(absl::string_view data,
                                     const Options& offer);

// Macro name → value, sent before a command.
using Macros = std::vector<std::pair<std::string, std::string>>;
std::string EncodeMacros(char for_command, const Macros& macros);

// The commands' data.
// family: '4', '6', 'L' (unix socket) or 'U' (unknown).
std::string EncodeConnect(absl::string_view hostname, char family,
                          uint16_t port, absl::string_view address);
std::string EncodeHelo(absl::string_view helo);
// MAIL / RCPT: "<address>" then each ESMTP argument, each NUL-terminated.
std::string EncodeEnvelope(absl::string_view address,
                           const std::vector<std::string>& esmtp_args);
std::string EncodeHeader(absl::string_view name, absl::string_view value);
std::string EncodeUnknown(absl::string_view command_line);

// A milter's reply, decoded.
struct Reply {
  enum class Kind {
    // Final answers to a command.
    kContinue,
    kAccept,
    kReject,
    kTempfail,
    kDiscard,
    kReplyCode,  // code/enhanced/text below
    kShutdown,   // SMFIR_SHUTDOWN: the milter closes; a tempfail
    kConnFail,   // SMFIR_CONN_FAIL: drop the SMTP connection
    kSkip,       // stop sending body chunks
    // Intermediate, at end of message.
    kProgress,
    kQuarantine,  // text: the reason
    kAddHeader,
    kInsHeader,  // index
    kChgHeader,  // index (1-based occurrence; empty value deletes)
    kAddRcpt,    // address, args
    kDelRcpt,    // address
    kChgFrom,    // address, args
    kReplBody,   // body: one chunk
  };
  Kind kind = Kind::kContinue;
  int code = 0;          // kReplyCode: 400..599
  std::string enhanced;  // kReplyCode: "5.7.1" when present
  std::string text;      // kReplyCode (lines joined by "\n"), kQuarantine
  uint32_t index = 0;    // kInsHeader, kChgHeader
  std::string name;      // header name
  std::string value;     // header value
  std::string address;   // recipient or sender, angle brackets removed
  std::string args;      // ESMTP args (kAddRcpt, kChgFrom)
  std::string body;      // kReplBody

  bool final() const;  // ends the command's answer
};
absl::StatusOr<Reply> DecodeReply(const Packet& packet);

// True when the reply text is a well-formed SMTP reply line for milter use:
// "4xx"/"5xx", optional enhanced code of the same class, text without NUL.
// Exposed for tests.
bool ParseReplyCode(absl::string_view text, int* code, std::string* enhanced,
                    std::string* rest);

}  // namespace sinkline::milter
