#include "sink_broker/rule.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::broker {
namespace {

absl::Status RuleError(size_t pos, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("rule error at position ", pos + 1, ": ", what));
}

// [begin, end) of `s` without surrounding blanks.
void Trim(absl::string_view s, size_t& begin, size_t& end) {
  while (begin < end && absl::ascii_isspace(s[begin])) ++begin;
  while (end > begin && absl::ascii_isspace(s[end - 1])) --end;
}

bool ParseIp(absl::string_view text, unsigned char out[16]) {
  std::string s(text);
  in6_addr a6;
  if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
    std::memcpy(out, &a6, 16);
    return true;
  }
  in_addr a4;
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) {
    std::memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    std::memcpy(out + 12, &a4, 4);
    return true;
  }
  return false;
}

bool InBlock(const Rule::Cidr& block, const unsigned char addr[16]) {
  int bits = block.prefix;
  for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    unsigned char mask =
        bits >= 8 ? 0xff : static_cast<unsigned char>(0xff << (8 - bits));
    if ((addr[i] & mask) != (block.addr[i] & mask)) return false;
  }
  return true;
}

}  // namespace

bool GlobMatch(absl::string_view pattern, absl::string_view text) {
  size_t p = 0, t = 0;
  size_t star = absl::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (p < pattern.size() && absl::ascii_tolower(pattern[p]) ==
                                         absl::ascii_tolower(text[t])) {
      ++p;
      ++t;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::StatusOr<Rule> Rule::Parse(absl::string_view text) {
  Rule rule;
  rule.text_ = std::string(text);
  size_t seg_begin = 0;
  while (seg_begin <= text.size()) {
    size_t seg_end = text.find(';', seg_begin);
    if (seg_end == absl::string_view::npos) seg_end = text.size();
    size_t b = seg_begin, e = seg_end;
    Trim(text, b, e);
    const bool last = seg_end == text.size();
    if (b == e) {
      // Blank rule, or a trailing ';'.
      if (last && (rule.conditions_.size() > 0 ||
                   text.find(';') == absl::string_view::npos))
        break;
      return RuleError(b, "empty condition");
    }
    absl::string_view seg = text.substr(b, e - b);
    size_t eq = seg.find('=');
    if (eq == absl::string_view::npos) {
      return RuleError(b, "expected key=value");
    }
    Condition cond;
    size_t key_end = eq;
    if (key_end > 0 && seg[key_end - 1] == '!') {
      cond.negated = true;
      --key_end;
    }
    size_t kb = 0, ke = key_end;
    Trim(seg, kb, ke);
    // Collapse blanks inside the key ("mail   from" is "mail from").
    std::string key;
    for (char c : seg.substr(kb, ke - kb)) {
      if (absl::ascii_isspace(c)) {
        if (!key.empty() && key.back() != ' ') key.push_back(' ');
      } else {
        key.push_back(absl::ascii_tolower(c));
      }
    }
    if (key == "mail from") {
      cond.key = Key::kMailFrom;
    } else if (key == "rcpt to") {
      cond.key = Key::kRcptTo;
    } else if (key == "helo" || key == "ehlo") {
      cond.key = Key::kHelo;
    } else if (key == "client") {
      cond.key = Key::kClient;
    } else if (key == "auth") {
      cond.key = Key::kAuth;
    } else {
      return RuleError(b + kb, absl::StrCat("unknown key '", key,
                                            "' (expected mail from, rcpt to, "
                                            "helo, ehlo, client or auth)"));
    }
    // Values, comma-separated.
    size_t vb = eq + 1;
    while (true) {
      size_t ve = seg.find(',', vb);
      if (ve == absl::string_view::npos) ve = seg.size();
      size_t pb = vb, pe = ve;
      Trim(seg, pb, pe);
      if (pb == pe) return RuleError(b + pb, "empty value");
      absl::string_view value = seg.substr(pb, pe - pb);
      if (cond.key == Key::kClient) {
        Cidr block;
        absl::string_view ip = value;
        size_t slash = value.find('/');
        int max_prefix = 128;
        if (slash != absl::string_view::npos) ip = value.substr(0, slash);
        if (!ParseIp(ip, block.addr)) {
          return RuleError(b + pb,
                           absl::StrCat("'", ip, "' is not an IP address"));
        }
        const bool v4 = ip.find(':') == absl::string_view::npos;
        if (v4) max_prefix = 32;
        int prefix = max_prefix;
        if (slash != absl::string_view::npos &&
            (!absl::SimpleAtoi(value.substr(slash + 1), &prefix) ||
             prefix < 0 || prefix > max_prefix)) {
          return RuleError(
              b + pb + slash + 1,
              absl::StrCat("prefix length must be 0..", max_prefix));
        }
        block.prefix = v4 ? prefix + 96 : prefix;
        cond.blocks.push_back(block);
      } else {
        cond.patterns.push_back(absl::AsciiStrToLower(value));
      }
      if (ve == seg.size()) break;
      vb = ve + 1;
    }
    rule.conditions_.push_back(std::move(cond));
    if (last) break;
    seg_begin = seg_end + 1;
  }
  return rule;
}

namespace {

bool AnyPattern(const Rule::Condition& c, absl::string_view value) {
  for (const auto& p : c.patterns) {
    if (p == "<>" ? value.empty() : GlobMatch(p, value)) return true;
  }
  return false;
}

}  // namespace

bool Rule::Matches(const sinkline::v1::Event& event) const {
  for (const auto& c : conditions_) {
    bool hit = false;
    switch (c.key) {
      case Key::kMailFrom:
        hit = AnyPattern(c, event.envelope().mail_from());
        break;
      case Key::kRcptTo:
        if (event.type() == sinkline::v1::EVENT_TYPE_RCPT) {
          hit = AnyPattern(c, event.recipient().address());
        } else {
          for (const auto& r : event.envelope().recipients()) {
            if (AnyPattern(c, r.address())) {
              hit = true;
              break;
            }
          }
        }
        break;
      case Key::kHelo:
        hit = AnyPattern(c, event.session().helo_name());
        break;
      case Key::kAuth:
        hit = !event.session().auth_identity().empty() &&
              AnyPattern(c, event.session().auth_identity());
        break;
      case Key::kClient: {
        unsigned char addr[16];
        if (ParseIp(event.session().client().ip(), addr)) {
          for (const auto& block : c.blocks) {
            if (InBlock(block, addr)) {
              hit = true;
              break;
            }
          }
        }
        break;
      }
    }
    if (hit == c.negated) return false;
  }
  return true;
}

}  // namespace sinkline::broker
