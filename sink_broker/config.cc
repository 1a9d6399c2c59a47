#include "sink_broker/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/address.h"

namespace sinkline::broker {
namespace {

constexpr uint32_t kDefaultDeadlineMs = 5000;

struct Ctx {
  const std::string& file;
  absl::Status Error(const YAML::Node& node, const std::string& what) const {
    const auto mark = node.Mark();
    if (mark.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        file, ":", mark.line + 1, ":", mark.column + 1, ": ", what));
  }
};

absl::Status CheckKeys(const Ctx& ctx, const YAML::Node& map,
                       const std::set<std::string>& allowed,
                       const std::string& where) {
  if (!map.IsMap()) return ctx.Error(map, where + " must be a mapping");
  for (const auto& kv : map) {
    const std::string key = kv.first.Scalar();
    if (!allowed.count(key)) {
      std::string list;
      for (const auto& a : allowed)
        absl::StrAppend(&list, list.empty() ? "" : ", ", a);
      return ctx.Error(kv.first, absl::StrCat("unknown key '", key, "' in ",
                                              where, " (expected ", list, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> String(const Ctx& ctx, const YAML::Node& map,
                                   const std::string& key, bool required,
                                   const std::string& def = "") {
  const YAML::Node n = map[key];
  if (!n) {
    if (required) return ctx.Error(map, "missing '" + key + "'");
    return def;
  }
  if (!n.IsScalar()) return ctx.Error(n, "'" + key + "' must be a string");
  return n.Scalar();
}

absl::StatusOr<uint32_t> Number(const Ctx& ctx, const YAML::Node& map,
                                const std::string& key, uint32_t def,
                                uint32_t min, uint32_t max) {
  const YAML::Node n = map[key];
  if (!n) return def;
  long long v = 0;
  if (!n.IsScalar() || !YAML::convert<long long>::decode(n, v)) {
    return ctx.Error(n, "'" + key + "' must be a whole number");
  }
  if (v < min || v > max) {
    return ctx.Error(n, absl::StrCat("'", key, "' must be ", min, "..", max));
  }
  return static_cast<uint32_t>(v);
}

absl::StatusOr<bool> Bool(const Ctx& ctx, const YAML::Node& map,
                          const std::string& key, bool def) {
  const YAML::Node n = map[key];
  if (!n) return def;
  bool v = false;
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) {
    return ctx.Error(n, "'" + key + "' must be true or false");
  }
  return v;
}

void SortBindings(std::vector<BindingConfig>& bindings) {
  auto key = [](const BindingConfig& b) {
    return std::make_tuple(b.spec.event(), b.spec.verb(), b.spec.priority(),
                           b.spec.name());
  };
  std::stable_sort(bindings.begin(), bindings.end(),
                   [&](const BindingConfig& a, const BindingConfig& b) {
                     return key(a) < key(b);
                   });
}

}  // namespace

std::string EventName(v1::EventType type) {
  std::string name = v1::EventType_Name(type);
  constexpr absl::string_view kPrefix = "EVENT_TYPE_";
  if (absl::StartsWith(name, kPrefix)) name = name.substr(kPrefix.size());
  return name;
}

absl::StatusOr<EventSelector> ParseEventName(const std::string& raw) {
  const std::string name = absl::AsciiStrToUpper(raw);
  if (name.empty()) return absl::InvalidArgumentError("empty event name");
  v1::EventType type;
  if (v1::EventType_Parse("EVENT_TYPE_" + name, &type) &&
      type != v1::EVENT_TYPE_UNSPECIFIED && type != v1::EVENT_TYPE_UNKNOWN) {
    return EventSelector{type, ""};
  }
  if (name == "UNKNOWN" || name == "UNSPECIFIED") {
    return absl::InvalidArgumentError(
        "bind a custom verb by its name (e.g. XSTATUS), not " + name);
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_') {
      return absl::InvalidArgumentError(
          absl::StrCat("'", raw, "' is neither an event nor a verb"));
    }
  }
  return EventSelector{v1::EVENT_TYPE_UNKNOWN, name};
}

absl::StatusOr<Config> ParseConfig(const std::string& text,
                                   const std::string& filename,
                                   const std::vector<SinkConfig>* known_sinks) {
  Ctx ctx{filename};
  // Every name, target and rule becomes a protobuf string (UTF-8 on the
  // wire), and the Admin service's bindings are written back as YAML, which
  // would not keep other bytes.
  if (!sinkline::ValidUtf8(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat(filename, ": not UTF-8 text"));
  }
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        filename, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  Config config;
  if (!root || root.IsNull()) return config;
  if (auto st = CheckKeys(ctx, root, {"sinks", "bindings"}, "the file");
      !st.ok()) {
    return st;
  }
  std::set<std::string> sink_names;
  if (known_sinks) {
    for (const auto& k : *known_sinks) sink_names.insert(k.name);
  }
  if (const YAML::Node sinks = root["sinks"]; sinks && !sinks.IsNull()) {
    if (!sinks.IsSequence()) return ctx.Error(sinks, "'sinks' must be a list");
    for (const auto& s : sinks) {
      if (auto st = CheckKeys(ctx, s, {"name", "target"}, "a sink"); !st.ok())
        return st;
      SinkConfig sink;
      auto name = String(ctx, s, "name", true);
      if (!name.ok()) return name.status();
      auto target = String(ctx, s, "target", true);
      if (!target.ok()) return target.status();
      if (name->empty()) return ctx.Error(s["name"], "sink name is empty");
      if (!sink_names.insert(*name).second) {
        return ctx.Error(s["name"], "duplicate sink '" + *name + "'");
      }
      sink.name = *name;
      sink.target = *target;
      config.sinks.push_back(std::move(sink));
    }
  }
  std::set<std::string> binding_names;
  if (const YAML::Node bindings = root["bindings"];
      bindings && !bindings.IsNull()) {
    if (!bindings.IsSequence()) {
      return ctx.Error(bindings, "'bindings' must be a list");
    }
    for (const auto& b : bindings) {
      if (auto st = CheckKeys(
              ctx, b,
              {"name", "sink", "event", "priority", "rule", "deadline_ms",
               "failure_policy", "content_access", "enabled", "expiry_policy",
               "session_affinity", "discard", "max_in_flight"},
              "a binding");
          !st.ok()) {
        return st;
      }
      BindingConfig bc;
      v1::Binding& spec = bc.spec;
      auto name = String(ctx, b, "name", true);
      if (!name.ok()) return name.status();
      if (name->empty()) return ctx.Error(b["name"], "binding name is empty");
      if (!binding_names.insert(*name).second) {
        return ctx.Error(b["name"], "duplicate binding '" + *name + "'");
      }
      spec.set_name(*name);
      auto sink = String(ctx, b, "sink", true);
      if (!sink.ok()) return sink.status();
      if (!sink_names.count(*sink)) {
        return ctx.Error(b["sink"], "unknown sink '" + *sink + "'");
      }
      spec.set_sink(*sink);
      auto event = String(ctx, b, "event", true);
      if (!event.ok()) return event.status();
      auto sel = ParseEventName(*event);
      if (!sel.ok())
        return ctx.Error(b["event"], std::string(sel.status().message()));
      spec.set_event(sel->type);
      spec.set_verb(sel->verb);
      auto prio = Number(ctx, b, "priority", kNativePriority, 0, kMaxPriority);
      if (!prio.ok()) return prio.status();
      spec.set_priority(*prio);
      auto deadline =
          Number(ctx, b, "deadline_ms", kDefaultDeadlineMs, 1, 600000);
      if (!deadline.ok()) return deadline.status();
      spec.set_deadline_ms(*deadline);
      auto max_in_flight = Number(ctx, b, "max_in_flight", 0, 0, 1000000);
      if (!max_in_flight.ok()) return max_in_flight.status();
      bc.max_in_flight = *max_in_flight;
      auto rule = String(ctx, b, "rule", false);
      if (!rule.ok()) return rule.status();
      auto parsed = Rule::Parse(*rule);
      if (!parsed.ok()) {
        return ctx.Error(b["rule"], std::string(parsed.status().message()));
      }
      bc.rule = std::move(*parsed);
      spec.set_rule(*rule);
      auto policy = String(ctx, b, "failure_policy", false, "tempfail");
      if (!policy.ok()) return policy.status();
      if (*policy == "continue") {
        spec.set_failure_policy(v1::FAILURE_POLICY_CONTINUE);
      } else if (*policy == "tempfail") {
        spec.set_failure_policy(v1::FAILURE_POLICY_TEMPFAIL);
      } else if (*policy == "reject") {
        spec.set_failure_policy(v1::FAILURE_POLICY_REJECT);
      } else {
        return ctx.Error(b["failure_policy"],
                         "failure_policy must be continue, tempfail or reject");
      }
      auto access = String(ctx, b, "content_access", false, "none");
      if (!access.ok()) return access.status();
      if (*access == "none") {
        spec.set_content_access(v1::CONTENT_ACCESS_NONE);
      } else if (*access == "read") {
        spec.set_content_access(v1::CONTENT_ACCESS_READ);
      } else if (*access == "read-write") {
        spec.set_content_access(v1::CONTENT_ACCESS_READ_WRITE);
      } else {
        return ctx.Error(b["content_access"],
                         "content_access must be none, read or read-write");
      }
      auto expiry = String(ctx, b, "expiry_policy", false, "release");
      if (!expiry.ok()) return expiry.status();
      if (*expiry == "release") {
        spec.set_expiry_policy(v1::EXPIRY_POLICY_RELEASE);
      } else if (*expiry == "hold") {
        spec.set_expiry_policy(v1::EXPIRY_POLICY_HOLD);
      } else {
        return ctx.Error(b["expiry_policy"],
                         "expiry_policy must be release or hold");
      }
      auto enabled = Bool(ctx, b, "enabled", true);
      if (!enabled.ok()) return enabled.status();
      spec.set_enabled(*enabled);
      auto affinity = Bool(ctx, b, "session_affinity", false);
      if (!affinity.ok()) return affinity.status();
      spec.set_session_affinity(*affinity);
      auto discard = Bool(ctx, b, "discard", false);
      if (!discard.ok()) return discard.status();
      spec.set_discard(*discard);
      spec.set_origin("file");
      config.bindings.push_back(std::move(bc));
    }
  }
  SortBindings(config.bindings);
  return config;
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseConfig(ss.str(), path);
}

std::vector<const BindingConfig*> Config::ChainFor(
    const v1::Event& event) const {
  std::vector<const BindingConfig*> out;
  for (const auto& b : bindings) {
    if (!b.spec.enabled() || b.spec.event() != event.type()) continue;
    if (event.type() == v1::EVENT_TYPE_UNKNOWN &&
        b.spec.verb() != absl::AsciiStrToUpper(event.verb())) {
      continue;
    }
    out.push_back(&b);
  }
  return out;  // already in (priority, name) order
}

v1::BindingMap Config::MakeBindingMap() const {
  v1::BindingMap map;
  std::set<int> events;
  std::set<std::string> verbs;
  for (const auto& b : bindings) {
    if (!b.spec.enabled()) continue;
    if (b.spec.event() == v1::EVENT_TYPE_UNKNOWN) {
      verbs.insert(b.spec.verb());
    } else {
      events.insert(b.spec.event());
    }
  }
  for (int e : events) map.add_events(static_cast<v1::EventType>(e));
  for (const auto& v : verbs) map.add_verbs(v);
  return map;
}

const SinkConfig* Config::FindSink(const std::string& name) const {
  for (const auto& s : sinks) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace sinkline::broker

namespace sinkline::broker {

std::string BindingsToYaml(const std::vector<BindingConfig>& bindings) {
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "bindings" << YAML::Value
      << YAML::BeginSeq;
  for (const auto& b : bindings) {
    const v1::Binding& s = b.spec;
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << s.name();
    out << YAML::Key << "sink" << YAML::Value << s.sink();
    out << YAML::Key << "event" << YAML::Value
        << (s.event() == v1::EVENT_TYPE_UNKNOWN ? s.verb()
                                                : EventName(s.event()));
    out << YAML::Key << "priority" << YAML::Value << s.priority();
    if (!s.rule().empty()) {
      out << YAML::Key << "rule" << YAML::Value << YAML::DoubleQuoted
          << s.rule();
    }
    out << YAML::Key << "deadline_ms" << YAML::Value << s.deadline_ms();
    const char* policy = "tempfail";
    if (s.failure_policy() == v1::FAILURE_POLICY_CONTINUE) policy = "continue";
    if (s.failure_policy() == v1::FAILURE_POLICY_REJECT) policy = "reject";
    out << YAML::Key << "failure_policy" << YAML::Value << policy;
    const char* access = "none";
    if (s.content_access() == v1::CONTENT_ACCESS_READ) access = "read";
    if (s.content_access() == v1::CONTENT_ACCESS_READ_WRITE) {
      access = "read-write";
    }
    out << YAML::Key << "content_access" << YAML::Value << access;
    out << YAML::Key << "expiry_policy" << YAML::Value
        << (s.expiry_policy() == v1::EXPIRY_POLICY_HOLD ? "hold" : "release");
    out << YAML::Key << "enabled" << YAML::Value << s.enabled();
    if (s.discard()) out << YAML::Key << "discard" << YAML::Value << true;
    if (b.max_in_flight > 0) {
      out << YAML::Key << "max_in_flight" << YAML::Value << b.max_in_flight;
    }
    if (s.session_affinity()) {
      out << YAML::Key << "session_affinity" << YAML::Value << true;
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

absl::StatusOr<Config> MergeBindings(const Config& file,
                                     const std::vector<BindingConfig>& extra) {
  Config merged = file;
  std::set<std::string> names;
  for (const auto& b : file.bindings) names.insert(b.spec.name());
  for (const auto& b : extra) {
    if (!names.insert(b.spec.name()).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("binding '", b.spec.name(), "' is defined twice"));
    }
    if (!file.FindSink(b.spec.sink())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "binding '", b.spec.name(), "' names sink '", b.spec.sink(),
          "', which the bindings file does not define"));
    }
    merged.bindings.push_back(b);
  }
  SortBindings(merged.bindings);
  return merged;
}

}  // namespace sinkline::broker
