// Fuzz target for the broker's bindings file and its rules
// (sink_broker/config.h, rule.h): what an operator, the Admin service's
// bindings or a mounted ConfigMap give the broker.
//
// Input: one octet, then text.
//   [0] < 128: the text is a bindings file (YAML).
//   [0] >= 128: the text is a rule, then '\n'-separated fields of an event
//       it is matched against: mail from, rcpt to, helo, client ip, auth.
//
// Invariants checked (a violation aborts): a file that is not UTF-8 is
// refused; a parsed file's bindings are in chain order (event, verb,
// priority, name) with unique names and known
// sinks; they survive BindingsToYaml and a second parse unchanged
// (the Admin service keeps its bindings that way); ChainFor gives enabled
// bindings of the event in order; the binding map names exactly the events
// that have one. A parsed rule keeps its text; the empty rule and the
// rule's own matches do not depend on the case of the event's fields.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "sink_broker/config.h"
#include "sink_broker/rule.h"
#include "sinkline/common/address.h"

namespace sinkline::broker {
namespace {

[[noreturn]] void Violation(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "config_fuzz: invariant violated: %s: %.400s\n", what,
               detail.c_str());
  std::abort();
}

bool Before(const BindingConfig& a, const BindingConfig& b) {
  if (a.spec.event() != b.spec.event()) return a.spec.event() < b.spec.event();
  if (a.spec.verb() != b.spec.verb()) return a.spec.verb() < b.spec.verb();
  if (a.spec.priority() != b.spec.priority()) {
    return a.spec.priority() < b.spec.priority();
  }
  return a.spec.name() < b.spec.name();
}

void CheckConfig(const Config& c) {
  std::set<std::string> names, sinks;
  for (const auto& s : c.sinks) sinks.insert(s.name);
  for (size_t i = 0; i < c.bindings.size(); ++i) {
    const auto& b = c.bindings[i];
    if (!names.insert(b.spec.name()).second) {
      Violation("binding name twice", b.spec.name());
    }
    if (!sinks.count(b.spec.sink())) Violation("unknown sink", b.spec.sink());
    if (b.spec.priority() > kMaxPriority) Violation("priority over the max");
    if (b.rule.text() != b.spec.rule()) Violation("rule text", b.spec.rule());
    if (i > 0 && Before(b, c.bindings[i - 1])) Violation("not in chain order");
  }
  // Round trip through the YAML the Admin service writes.
  const std::string yaml = BindingsToYaml(c.bindings);
  auto again = ParseConfig(yaml, "round-trip.yaml", &c.sinks);
  if (!again.ok()) Violation("BindingsToYaml not parsed back", yaml);
  if (again->bindings.size() != c.bindings.size()) {
    Violation("round trip lost bindings", yaml);
  }
  for (size_t i = 0; i < c.bindings.size(); ++i) {
    if (again->bindings[i].spec.SerializeAsString() !=
        c.bindings[i].spec.SerializeAsString()) {
      Violation("round trip changed a binding",
                c.bindings[i].spec.ShortDebugString() + " -> " +
                    again->bindings[i].spec.ShortDebugString());
    }
  }
  // Chains and the binding map.
  const v1::BindingMap map = c.MakeBindingMap();
  std::set<int> mapped(map.events().begin(), map.events().end());
  std::set<std::string> verbs(map.verbs().begin(), map.verbs().end());
  for (int t = 1; t <= 17; ++t) {
    if (!v1::EventType_IsValid(t)) continue;
    v1::Event e;
    e.set_type(static_cast<v1::EventType>(t));
    const auto chain = c.ChainFor(e);
    for (size_t i = 0; i < chain.size(); ++i) {
      if (!chain[i]->spec.enabled()) Violation("disabled binding in a chain");
      if (chain[i]->spec.event() != e.type()) Violation("chain of another");
      if (i > 0 && Before(*chain[i], *chain[i - 1])) {
        Violation("chain not in order");
      }
    }
    if (t != v1::EVENT_TYPE_UNKNOWN && !chain.empty() && !mapped.count(t)) {
      Violation("bound event not in the binding map");
    }
  }
  for (const auto& b : c.bindings) {
    if (b.spec.enabled() && b.spec.event() == v1::EVENT_TYPE_UNKNOWN &&
        !verbs.count(b.spec.verb())) {
      Violation("bound verb not in the binding map", b.spec.verb());
    }
  }
}

void CheckRule(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, '\n');
  auto rule = Rule::Parse(parts[0]);
  if (!rule.ok()) return;
  if (rule->text() != parts[0]) Violation("rule text changed", parts[0]);
  parts.resize(6);
  for (v1::EventType type :
       {v1::EVENT_TYPE_MAIL, v1::EVENT_TYPE_RCPT, v1::EVENT_TYPE_EOD}) {
    v1::Event e;
    e.set_type(type);
    e.mutable_envelope()->set_mail_from(parts[1]);
    e.mutable_envelope()->add_recipients()->set_address(parts[2]);
    e.mutable_recipient()->set_address(parts[2]);
    e.mutable_session()->set_helo_name(parts[3]);
    e.mutable_session()->mutable_client()->set_ip(parts[4]);
    e.mutable_session()->set_auth_identity(parts[5]);
    const bool m = rule->Matches(e);
    if (rule->empty() && !m) Violation("the empty rule did not match");
    // Matching is case-insensitive (client addresses aside).
    v1::Event upper = e;
    upper.mutable_envelope()->set_mail_from(absl::AsciiStrToUpper(parts[1]));
    upper.mutable_envelope()->mutable_recipients(0)->set_address(
        absl::AsciiStrToUpper(parts[2]));
    upper.mutable_recipient()->set_address(absl::AsciiStrToUpper(parts[2]));
    upper.mutable_session()->set_helo_name(absl::AsciiStrToUpper(parts[3]));
    upper.mutable_session()->set_auth_identity(absl::AsciiStrToUpper(parts[5]));
    if (rule->Matches(upper) != m) {
      Violation("matching depends on case", std::string(text));
    }
  }
  if (!GlobMatch("*", parts[1])) Violation("'*' did not match", parts[1]);
}

void Run(const uint8_t* data, size_t size) {
  if (size < 1 || size > 65536) return;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] >= 128) {
    CheckRule(text);
    return;
  }
  auto c = ParseConfig(text, "fuzz.yaml");
  if (c.ok() && !ValidUtf8(text)) Violation("took a file that is not UTF-8");
  if (!c.ok()) {
    if (c.status().message().empty()) Violation("an error without a reason");
    return;
  }
  CheckConfig(*c);
}

}  // namespace
}  // namespace sinkline::broker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Strings that are not UTF-8 are what fuzzing makes; protobuf's log of
  // each would drown the output.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  sinkline::broker::Run(data, size);
  return 0;
}
