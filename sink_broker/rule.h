// Binding rules in the classic event-sink form:
//
//   mail from=*@example.com;rcpt
//   to=*@corp.example;ehlo=*.example.net;client=192.0.2.0/24
//
// Conditions are separated by ';' and all must hold. Each is `key=patterns`
// or `key!=patterns`; patterns are separated by ',' and any may match.
// Matching is case-insensitive and '*' matches any run of characters.
// Keys: `mail from`, `rcpt to`, `helo` (or `ehlo`), `client` (an IP address
// or a CIDR block), `auth` (the authenticated identity; "" matches none).
// For a RCPT event `rcpt to` looks at the recipient at hand; for other events
// it holds when any recipient of the envelope so far matches.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sinkline/common/cidr.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

class Rule {
 public:
  // The empty rule matches everything.
  Rule() = default;

  // Parses `text`; errors name the 1-based character position.
  static absl::StatusOr<Rule> Parse(absl::string_view text);

  // True when every condition holds for `event`.
  bool Matches(const sinkline::v1::Event& event) const;

  bool empty() const { return conditions_.empty(); }
  const std::string& text() const { return text_; }

  enum class Key { kMailFrom, kRcptTo, kHelo, kClient, kAuth };

  struct Condition {
    Key key;
    bool negated = false;
    std::vector<std::string> patterns;   // lower-cased; kClient: unused
    std::vector<sinkline::Cidr> blocks;  // kClient only
  };

 private:
  std::string text_;
  std::vector<Condition> conditions_;
};

// Case-insensitive glob match where '*' matches any run (also empty).
bool GlobMatch(absl::string_view pattern, absl::string_view text);

}  // namespace sinkline::broker
