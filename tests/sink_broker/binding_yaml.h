// One binding of a bindings file, as the chain tests write them: a sink
// named `fake`, the event and priority given, and any extra YAML lines.
#pragma once

#include <string>

namespace sinkline::broker::test_support {

inline std::string Binding(const std::string& name, const std::string& event,
                           int priority, const std::string& extra = "") {
  return "  - name: " + name + "\n    sink: fake\n    event: " + event +
         "\n    priority: " + std::to_string(priority) + "\n" + extra;
}

}  // namespace sinkline::broker::test_support
