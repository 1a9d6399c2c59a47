#include "sinks/milter/milter_codec.h"

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::milter {
namespace {

constexpr absl::string_view kErrorPrefix = "milter protocol: ";

void PutU32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

uint32_t GetU32(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void PutString(std::string& out, absl::string_view s) {
  out.append(s.data(), s.size());
  out.push_back('\0');
}

// Reads one NUL-terminated string from `in`, advancing it. A string without
// its NUL is an error.
absl::StatusOr<std::string> TakeString(absl::string_view& in,
                                       absl::string_view what) {
  const size_t nul = in.find('\0');
  if (nul == absl::string_view::npos) {
    return ProtocolError(absl::StrCat(what, " is not NUL-terminated"));
  }
  std::string out(in.substr(0, nul));
  in.remove_prefix(nul + 1);
  return out;
}

std::string StripBrackets(absl::string_view a) {
  a = absl::StripAsciiWhitespace(a);
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') {
    a = a.substr(1, a.size() - 2);
  }
  return std::string(a);
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// "x.y.z" with x = class, y 1..3 digits, z 1..3 digits.
bool IsEnhanced(absl::string_view s, char klass) {
  std::vector<absl::string_view> parts = absl::StrSplit(s, '.');
  if (parts.size() != 3 || parts[0].size() != 1 || parts[0][0] != klass) {
    return false;
  }
  for (int i = 1; i < 3; ++i) {
    if (parts[i].empty() || parts[i].size() > 3) return false;
    for (char c : parts[i]) {
      if (!IsDigit(c)) return false;
    }
  }
  return true;
}

}  // namespace

absl::Status ProtocolError(absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(kErrorPrefix, what));
}

bool IsProtocolError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         absl::StartsWith(status.message(), kErrorPrefix);
}

std::string Encode(char code, absl::string_view data) {
  std::string out;
  AppendPacket(out, code, data);
  return out;
}

void AppendPacket(std::string& out, char code, absl::string_view data) {
  out.reserve(out.size() + 5 + data.size());
  PutU32(out, static_cast<uint32_t>(data.size() + 1));
  out.push_back(code);
  out.append(data.data(), data.size());
}

absl::StatusOr<std::optional<Packet>> Decoder::Next() {
  if (buffer_.size() < 4) return std::optional<Packet>();
  const uint32_t len = GetU32(buffer_);
  if (len == 0) return ProtocolError("packet of length 0");
  if (len > max_packet_) {
    return ProtocolError(absl::StrCat(
        "packet of ", len, " octets exceeds the limit of ", max_packet_));
  }
  if (buffer_.size() < 4 + size_t{len}) return std::optional<Packet>();
  Packet p;
  p.code = buffer_[4];
  p.data.assign(buffer_, 5, len - 1);
  buffer_.erase(0, 4 + size_t{len});
  return std::optional<Packet>(std::move(p));
}

std::string EncodeOptneg(const Options& offer) {
  std::string out;
  PutU32(out, offer.version);
  PutU32(out, offer.actions);
  PutU32(out, offer.protocol);
  return out;
}

absl::StatusOr<Options> DecodeOptneg(absl::string_view data,
                                     const Options& offer) {
  if (data.size() < 12) {
    return ProtocolError(
        absl::StrCat("OPTNEG answer of ", data.size(), " octets, want 12"));
  }
  Options got;
  got.version = GetU32(data.substr(0, 4));
  got.actions = GetU32(data.substr(4, 4));
  got.protocol = GetU32(data.substr(8, 4));
  if (got.version < 2 || got.version > offer.version) {
    return ProtocolError(absl::StrCat("milter speaks version ", got.version,
                                      ", we speak 2..", offer.version));
  }
  if ((got.actions & ~offer.actions) != 0) {
    return ProtocolError(absl::StrCat("milter asks for actions 0x",
                                      absl::Hex(got.actions & ~offer.actions),
                                      " that were not offered"));
  }
  // Flags beyond what we offered (e.g. SMFIP_MDS_256K/1M) are harmless
  // requests about sizes we never exceed; keep only ours.
  got.protocol &= offer.protocol;
  data.remove_prefix(12);
  while (!data.empty()) {
    if (data.size() < 5) return ProtocolError("truncated OPTNEG macro list");
    const uint32_t stage = GetU32(data.substr(0, 4));
    data.remove_prefix(4);
    auto names = TakeString(data, "OPTNEG macro list");
    if (!names.ok()) return names.status();
    if (stage >= kStages) {
      return ProtocolError(absl::StrCat("OPTNEG macro stage ", stage));
    }
    got.macros[stage] = *names;
  }
  return got;
}

std::string EncodeMacros(char for_command, const Macros& macros) {
  std::string out(1, for_command);
  for (const auto& [name, value] : macros) {
    PutString(out, name);
    PutString(out, value);
  }
  return out;
}

std::string EncodeConnect(absl::string_view hostname, char family,
                          uint16_t port, absl::string_view address) {
  std::string out;
  PutString(out, hostname);
  out.push_back(family);
  if (family != 'U') {
    out.push_back(static_cast<char>(port >> 8));
    out.push_back(static_cast<char>(port & 0xff));
    PutString(out, address);
  }
  return out;
}

std::string EncodeHelo(absl::string_view helo) {
  std::string out;
  PutString(out, helo);
  return out;
}

std::string EncodeEnvelope(absl::string_view address,
                           const std::vector<std::string>& esmtp_args) {
  std::string out;
  PutString(out, absl::StrCat("<", address, ">"));
  for (const auto& a : esmtp_args) PutString(out, a);
  return out;
}

std::string EncodeHeader(absl::string_view name, absl::string_view value) {
  std::string out;
  PutString(out, name);
  PutString(out, value);
  return out;
}

std::string EncodeUnknown(absl::string_view command_line) {
  std::string out;
  PutString(out, command_line);
  return out;
}

bool ParseReplyCode(absl::string_view text, int* code, std::string* enhanced,
                    std::string* rest) {
  // A multi-line reply: "550-5.7.1 one\r\n550 5.7.1 two"; every line must
  // carry the same code.
  std::vector<absl::string_view> lines =
      absl::StrSplit(text, absl::ByAnyChar("\r\n"), absl::SkipEmpty());
  if (lines.empty()) return false;
  std::vector<std::string> texts;
  std::string first_code;
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (line.size() < 3 || !IsDigit(line[0]) || !IsDigit(line[1]) ||
        !IsDigit(line[2]) || (line[0] != '4' && line[0] != '5')) {
      return false;
    }
    if (i == 0) {
      first_code = std::string(line.substr(0, 3));
    } else if (line.substr(0, 3) != first_code) {
      return false;
    }
    line.remove_prefix(3);
    if (!line.empty()) {
      if (line[0] != ' ' && line[0] != '-') return false;
      line.remove_prefix(1);
    }
    absl::string_view word = line.substr(0, line.find(' '));
    if (IsEnhanced(word, first_code[0])) {
      if (enhanced->empty()) *enhanced = std::string(word);
      line.remove_prefix(word.size());
      line = absl::StripLeadingAsciiWhitespace(line);
    }
    for (char c : line) {
      if (c == '\0' || static_cast<unsigned char>(c) < 0x20) return false;
    }
    texts.emplace_back(line);
  }
  *code = (first_code[0] - '0') * 100 + (first_code[1] - '0') * 10 +
          (first_code[2] - '0');
  *rest = absl::StrJoin(texts, " ");
  return true;
}

bool Reply::final() const {
  switch (kind) {
    case Kind::kContinue:
    case Kind::kAccept:
    case Kind::kReject:
    case Kind::kTempfail:
    case Kind::kDiscard:
    case Kind::kReplyCode:
    case Kind::kShutdown:
    case Kind::kConnFail:
    case Kind::kSkip:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<Reply> DecodeReply(const Packet& packet) {
  Reply r;
  absl::string_view in = packet.data;
  using K = Reply::Kind;
  auto no_data = [&](K kind) -> absl::StatusOr<Reply> {
    r.kind = kind;
    return r;
  };
  switch (packet.code) {
    case reply::kContinue:
      return no_data(K::kContinue);
    case reply::kAccept:
      return no_data(K::kAccept);
    case reply::kReject:
      return no_data(K::kReject);
    case reply::kTempfail:
      return no_data(K::kTempfail);
    case reply::kDiscard:
      return no_data(K::kDiscard);
    case reply::kShutdown:
      return no_data(K::kShutdown);
    case reply::kConnFail:
      return no_data(K::kConnFail);
    case reply::kSkip:
      return no_data(K::kSkip);
    case reply::kProgress:
      return no_data(K::kProgress);
    case reply::kReplyCode: {
      auto text = TakeString(in, "reply code");
      if (!text.ok()) return text.status();
      r.kind = K::kReplyCode;
      if (!ParseReplyCode(*text, &r.code, &r.enhanced, &r.text)) {
        return ProtocolError(
            absl::StrCat("bad reply code \"", absl::CEscape(*text), "\""));
      }
      return r;
    }
    case reply::kQuarantine: {
      auto text = TakeString(in, "quarantine reason");
      if (!text.ok()) return text.status();
      r.kind = K::kQuarantine;
      r.text = *text;
      return r;
    }
    case reply::kAddHeader:
    case reply::kInsHeader:
    case reply::kChgHeader: {
      if (packet.code != reply::kAddHeader) {
        if (in.size() < 4) return ProtocolError("header index truncated");
        r.index = GetU32(in.substr(0, 4));
        in.remove_prefix(4);
      }
      auto name = TakeString(in, "header name");
      if (!name.ok()) return name.status();
      auto value = TakeString(in, "header value");
      if (!value.ok()) return value.status();
      if (name->empty()) return ProtocolError("empty header name");
      r.kind = packet.code == reply::kAddHeader   ? K::kAddHeader
               : packet.code == reply::kInsHeader ? K::kInsHeader
                                                  : K::kChgHeader;
      r.name = *name;
      r.value = *value;
      return r;
    }
    case reply::kAddRcpt:
    case reply::kAddRcptPar:
    case reply::kDelRcpt:
    case reply::kChgFrom: {
      auto address = TakeString(in, "address");
      if (!address.ok()) return address.status();
      if (packet.code != reply::kDelRcpt && packet.code != reply::kAddRcpt &&
          !in.empty()) {
        auto args = TakeString(in, "ESMTP arguments");
        if (!args.ok()) return args.status();
        r.args = *args;
      }
      r.kind = packet.code == reply::kDelRcpt   ? K::kDelRcpt
               : packet.code == reply::kChgFrom ? K::kChgFrom
                                                : K::kAddRcpt;
      r.address = StripBrackets(*address);
      if (r.address.empty() && r.kind != K::kChgFrom) {
        return ProtocolError("empty recipient");
      }
      return r;
    }
    case reply::kReplBody:
      r.kind = K::kReplBody;
      r.body = packet.data;
      return r;
    case reply::kSetSymList:
      return ProtocolError("SETSYMLIST outside option negotiation");
    default:
      return ProtocolError(absl::StrCat(
          "unknown reply '", absl::CEscape(std::string(1, packet.code)), "'"));
  }
}

}  // namespace sinkline::milter
