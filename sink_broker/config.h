// The broker's configuration: sinks and bindings, read from a YAML file.
// A file with any error is refused as a whole, with file, line and reason.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sink_broker/rule.h"
#include "sinkline/v1/admin.pb.h"
#include "sinkline/v1/session.pb.h"

namespace sinkline::broker {

// The native handler's place in every chain.
inline constexpr uint32_t kNativePriority = 24575;
inline constexpr uint32_t kMaxPriority = 32767;

struct SinkConfig {
  std::string name;
  std::string target;
};

struct BindingConfig {
  v1::Binding spec;  // as the Admin service shows it
  Rule rule;
  // Most calls of this binding under way at once (sink_calls.h; 0: the
  // broker's --max-sink-calls-in-flight). Bindings file only.
  uint32_t max_in_flight = 0;
};

struct Config {
  std::vector<SinkConfig> sinks;
  // Ordered by event, then priority, then name.
  std::vector<BindingConfig> bindings;

  // Enabled bindings that may fire for `event` (event type, and verb for
  // UNKNOWN), in chain order. Rules are not checked here.
  std::vector<const BindingConfig*> ChainFor(const v1::Event& event) const;
  // Which events have at least one enabled binding.
  v1::BindingMap MakeBindingMap() const;
  const SinkConfig* FindSink(const std::string& name) const;
};

// Parses the YAML text of a bindings file; `filename` appears in errors.
// Bindings may also name the sinks in `known_sinks` (used for the admin
// service's bindings, whose sinks come from the bindings file).
absl::StatusOr<Config> ParseConfig(
    const std::string& text, const std::string& filename,
    const std::vector<SinkConfig>* known_sinks = nullptr);

// The YAML form of bindings (the bindings file's format, without sinks).
std::string BindingsToYaml(const std::vector<BindingConfig>& bindings);

// `file` with `extra` bindings added (in chain order). Fails when a name is
// used twice or a sink is unknown.
absl::StatusOr<Config> MergeBindings(const Config& file,
                                     const std::vector<BindingConfig>& extra);
absl::StatusOr<Config> LoadConfig(const std::string& path);

// "EOD" -> EVENT_TYPE_EOD; other upper-case words are custom verbs
// (EVENT_TYPE_UNKNOWN with that verb).
struct EventSelector {
  v1::EventType type;
  std::string verb;
};
absl::StatusOr<EventSelector> ParseEventName(const std::string& name);
// EVENT_TYPE_EOD -> "EOD".
std::string EventName(v1::EventType type);

}  // namespace sinkline::broker
