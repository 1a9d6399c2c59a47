// sinkline check-config FILE: the bindings file read exactly as the broker
// reads it (its own parser: file:line:column: reason), then every sink it
// names asked for health, as a whole and for sinkline.v1.Sink -- like
// `postfix check` or `nginx -t` before a reload.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sink_broker/config.h"
#include "tools/sinkline/commands.h"
#include "tools/sinkline/output.h"

namespace sinkline::cli {
namespace {

namespace health = grpc::health::v1;

struct SinkCheck {
  std::string name, target, result;
  int code = kOk;
};

// One health question; "" when SERVING, else what is wrong.
SinkCheck Ask(const Client& client, const broker::SinkConfig& sink) {
  SinkCheck out{sink.name, sink.target, "ok"};
  auto stub = health::Health::NewStub(client.Channel(sink.target));
  for (const char* service : {"", "sinkline.v1.Sink"}) {
    health::HealthCheckRequest req;
    req.set_service(service);
    health::HealthCheckResponse resp;
    auto ctx = client.Context(/*operator_call=*/false);
    const grpc::Status st = stub->Check(ctx.get(), req, &resp);
    const std::string what =
        *service ? absl::StrCat("service ", service) : std::string("health");
    if (!st.ok()) {
      out.code = st.error_code() == grpc::NOT_FOUND
                     ? kRefused
                     : ExitCodeFor(st.error_code());
      out.result = st.error_code() == grpc::NOT_FOUND
                       ? absl::StrCat("does not serve ", service)
                       : absl::StrCat(what, ": ", st.error_message());
      return out;
    }
    if (resp.status() != health::HealthCheckResponse::SERVING) {
      out.code = kRefused;
      out.result = absl::StrCat(
          what, ": ",
          health::HealthCheckResponse::ServingStatus_Name(resp.status()));
      return out;
    }
  }
  return out;
}

}  // namespace

int CheckConfigCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {"no-health"}, 1, 1)) return *bad;
  const std::string& path = args.words[1];
  auto config = broker::LoadConfig(path);
  if (!config.ok()) {
    const int code = config.status().code() == absl::StatusCode::kNotFound
                         ? kNotFound
                         : kRefused;
    if (args.json) {
      std::cout << "{\"file\":" << JsonQuote(path) << ",\"ok\":false"
                << ",\"error\":"
                << JsonQuote(std::string(config.status().message())) << "}\n";
    } else {
      // The broker's own message, as its log says it.
      std::cerr << config.status().message() << "\n";
    }
    return code;
  }
  std::vector<SinkCheck> checks;
  int code = kOk;
  if (!args.Has("no-health")) {
    for (const auto& s : config->sinks) {
      checks.push_back(Ask(client, s));
      // The worst answer decides: refused (4) over unreachable (3).
      code = std::max(code, checks.back().code);
    }
  }
  if (args.json) {
    std::string sinks = "[";
    for (const auto& c : checks) {
      absl::StrAppend(&sinks, sinks.size() > 1 ? "," : "",
                      "{\"name\":", JsonQuote(c.name),
                      ",\"target\":", JsonQuote(c.target),
                      ",\"ok\":", c.code == kOk ? "true" : "false",
                      ",\"result\":", JsonQuote(c.result), "}");
    }
    std::cout << "{\"file\":" << JsonQuote(path)
              << ",\"ok\":" << (code == kOk ? "true" : "false")
              << ",\"sinks\":" << sinks << "]"
              << ",\"bindings\":" << config->bindings.size() << "}\n";
    return code;
  }
  if (!checks.empty()) {
    Table t({"SINK", "TARGET", "HEALTH"});
    for (const auto& c : checks) t.Add({c.name, c.target, c.result});
    t.Print(std::cout);
  }
  std::cout << path << ": " << (code == kOk ? "ok" : "sinks not ready") << " ("
            << config->sinks.size() << " sinks, " << config->bindings.size()
            << " bindings)\n";
  return code;
}

}  // namespace sinkline::cli
