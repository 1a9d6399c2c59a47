#include "sink_broker/rule.h"

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
        size_t error_at = 0;
        auto block = sinkline::Cidr::Parse(value, &error_at);
        if (!block.ok()) {
          return RuleError(b + pb + error_at, block.status().message());
        }
        cond.blocks.push_back(*block);
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
      case Key::kClient:
        hit = sinkline::InNetworks(c.blocks, event.session().client().ip());
        break;
    }
    if (hit == c.negated) return false;
  }
  return true;
}

}  // namespace sinkline::broker
