// sinkline bindings: list them, enable or disable one, or apply a YAML file
// of bindings (created or updated through the Admin service, the
// difference shown first). The file is read by the broker's own parser.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "sink_broker/config.h"
#include "tools/sinkline/commands.h"
#include "tools/sinkline/output.h"

namespace sinkline::cli {
namespace {

namespace pb = google::protobuf;

int List(const Args& args, const Client& client) {
  v1::ListBindingsResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Admin()->ListBindings(ctx.get(), {}, &resp); !st.ok()) {
    return Report("bindings", st);
  }
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  Table t({"NAME", "EVENT", "PRIORITY", "SINK", "ENABLED", "POLICY", "ACCESS",
           "DEADLINE", "ORIGIN", "RULE"});
  for (const auto& b : resp.bindings()) {
    t.Add({b.name(), EventLabel(b), absl::StrCat(b.priority()), b.sink(),
           b.enabled() ? "yes" : "no", PolicyName(b.failure_policy()),
           AccessName(b.content_access()), absl::StrCat(b.deadline_ms(), "ms"),
           OrDash(b.origin()), OrDash(b.rule())});
  }
  t.Print(std::cout);
  return kOk;
}

int SetEnabled(const Args& args, const Client& client, bool enabled) {
  v1::SetBindingEnabledRequest req;
  req.set_name(args.words[2]);
  v1::BindingResponse resp;
  auto ctx = client.Context();
  auto admin = client.Admin();
  const grpc::Status st = enabled
                              ? admin->EnableBinding(ctx.get(), req, &resp)
                              : admin->DisableBinding(ctx.get(), req, &resp);
  if (!st.ok()) return Report(args.words[1] + " " + args.words[2], st);
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
  } else {
    std::cout << resp.binding().name() << ": "
              << (resp.binding().enabled() ? "enabled" : "disabled") << "\n";
  }
  return kOk;
}

// A binding's fields by name, as JSON values, for the difference.
std::map<std::string, pb::Value> Fields(v1::Binding b) {
  b.clear_origin();
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)pb::util::MessageToJsonString(b, &json, options);
  pb::Struct s;
  (void)pb::util::JsonStringToMessage(json, &s);
  return {s.fields().begin(), s.fields().end()};
}

std::string ValueText(const pb::Value& v) {
  switch (v.kind_case()) {
    case pb::Value::kStringValue:
      return v.string_value().empty() ? "\"\"" : v.string_value();
    case pb::Value::kNumberValue:
      return absl::StrCat(static_cast<int64_t>(v.number_value()));
    case pb::Value::kBoolValue:
      return v.bool_value() ? "true" : "false";
    default:
      return "-";
  }
}

struct Change {
  std::string action;  // "create", "update", "unchanged"
  v1::Binding binding;
  std::vector<std::string> lines;  // field: old -> new
};

int Apply(const Args& args, const Client& client) {
  const std::string& path = args.words[2];
  auto admin = client.Admin();
  v1::ListSinksResponse sinks;
  v1::ListBindingsResponse current;
  {
    auto ctx = client.Context();
    if (auto st = admin->ListSinks(ctx.get(), {}, &sinks); !st.ok()) {
      return Report("bindings apply", st);
    }
    auto ctx2 = client.Context();
    if (auto st = admin->ListBindings(ctx2.get(), {}, &current); !st.ok()) {
      return Report("bindings apply", st);
    }
  }
  std::ifstream in(path);
  if (!in)
    return ReportLocal("bindings apply",
                       absl::NotFoundError(path + ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  // The file's sinks (if any) must be the broker's; bindings may name any
  // sink the broker has.
  std::vector<broker::SinkConfig> known;
  for (const auto& s : sinks.sinks()) known.push_back({s.name(), s.target()});
  auto parsed = broker::ParseConfig(text.str(), path, &known);
  if (!parsed.ok()) {
    std::cerr << parsed.status().message() << "\n";
    return kRefused;
  }
  std::map<std::string, v1::Binding> now;
  for (const auto& b : current.bindings()) now[b.name()] = b;
  std::vector<Change> changes;
  for (const auto& bc : parsed->bindings) {
    Change c;
    c.binding = bc.spec;
    c.binding.clear_origin();
    auto it = now.find(c.binding.name());
    if (it == now.end()) {
      c.action = "create";
    } else {
      const auto old_fields = Fields(it->second);
      for (const auto& [key, value] : Fields(c.binding)) {
        auto o = old_fields.find(key);
        if (o == old_fields.end() ||
            !pb::util::MessageDifferencer::Equals(o->second, value)) {
          c.lines.push_back(absl::StrCat(
              key, ": ",
              o == old_fields.end() ? std::string("-") : ValueText(o->second),
              " -> ", ValueText(value)));
        }
      }
      c.action = c.lines.empty() ? "unchanged" : "update";
    }
    changes.push_back(std::move(c));
  }
  const bool dry = args.Has("dry-run");
  if (!args.json) {
    for (const auto& c : changes) {
      const char mark = c.action == "create"   ? '+'
                        : c.action == "update" ? '~'
                                               : '=';
      std::cout << mark << " " << c.binding.name() << " (" << c.action;
      if (c.action == "create") {
        std::cout << ": " << EventLabel(c.binding) << " priority "
                  << c.binding.priority() << " sink " << c.binding.sink();
      }
      std::cout << ")\n";
      for (const auto& l : c.lines) std::cout << "    " << l << "\n";
    }
  }
  std::string json = "[";
  int code = kOk;
  for (const auto& c : changes) {
    v1::BindingResponse resp;
    grpc::Status st;
    if (!dry && c.action != "unchanged") {
      auto ctx = client.Context();
      if (c.action == "create") {
        v1::CreateBindingRequest req;
        *req.mutable_binding() = c.binding;
        st = admin->CreateBinding(ctx.get(), req, &resp);
      } else {
        v1::UpdateBindingRequest req;
        *req.mutable_binding() = c.binding;
        st = admin->UpdateBinding(ctx.get(), req, &resp);
      }
      if (!st.ok()) {
        code = Report(c.action + " " + c.binding.name(), st);
        break;
      }
    }
    absl::StrAppend(&json, json.size() > 1 ? "," : "",
                    "{\"action\":", JsonQuote(c.action), ",\"binding\":",
                    ToJson(resp.has_binding() ? resp.binding() : c.binding),
                    "}");
  }
  if (args.json) {
    std::cout << "{\"dry_run\":" << (dry ? "true" : "false")
              << ",\"changes\":" << json << "]}\n";
  } else if (code == kOk) {
    std::cout << (dry ? "dry run: nothing changed\n" : "applied\n");
  }
  return code;
}

}  // namespace

int BindingsCommand(const Args& args, const Client& client) {
  if (args.words.size() == 1) {
    if (auto bad = CheckUsage(args, {}, 0, 0)) return *bad;
    return List(args, client);
  }
  const std::string& sub = args.words[1];
  if (sub == "enable" || sub == "disable") {
    if (auto bad = CheckUsage(args, {}, 2, 2)) return *bad;
    return SetEnabled(args, client, sub == "enable");
  }
  if (sub == "apply") {
    if (auto bad = CheckUsage(args, {"dry-run"}, 2, 2)) return *bad;
    return Apply(args, client);
  }
  return UsageError("unknown bindings command '" + sub + "'");
}

}  // namespace sinkline::cli
