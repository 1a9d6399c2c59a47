// sinkline leases | sessions | drain | counters: what is going on right now
// in the broker and in an edge.
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tools/sinkline/commands.h"
#include "tools/sinkline/output.h"

namespace sinkline::cli {

int LeasesCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {}, 0, 0)) return *bad;
  v1::ListLeasesResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Admin()->ListLeases(ctx.get(), {}, &resp); !st.ok()) {
    return Report("leases", st);
  }
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  Table t({"LEASE", "QUEUE ID", "BINDING", "ACCESS", "EXPIRES"});
  for (const auto& l : resp.leases()) {
    t.Add({l.id(), l.queue_id(), l.binding(), AccessName(l.access()),
           Left(l.expires())});
  }
  t.Print(std::cout);
  return kOk;
}

int SessionsCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {}, 0, 0)) return *bad;
  v1::ListSessionsResponse resp;
  auto ctx = client.Context();
  const std::string& edge = client.connection().edge_admin;
  if (auto st = client.EdgeAdmin(edge)->ListSessions(ctx.get(), {}, &resp);
      !st.ok()) {
    return Report("sessions (edge " + edge + ")", st);
  }
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  Table t({"SESSION", "CLIENT", "HELO", "STATE", "TLS", "AUTH", "AGE"});
  for (const auto& s : resp.sessions()) {
    const auto& info = s.session();
    t.Add({info.session_id(),
           absl::StrCat(info.client().ip(), ":", info.client().port()),
           OrDash(info.helo_name()), s.state(),
           info.tls().active() ? OrDash(info.tls().version()) : "no",
           OrDash(info.auth_identity()), Age(s.connected())});
  }
  t.Print(std::cout);
  return kOk;
}

int DrainCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {"grace-ms"}, 0, 1)) return *bad;
  const std::string edge =
      args.words.size() > 1 ? args.words[1] : client.connection().edge_admin;
  v1::DrainRequest req;
  req.set_grace_ms(30000);
  if (auto g = args.Flag("grace-ms")) {
    uint32_t ms = 0;
    if (!absl::SimpleAtoi(*g, &ms)) return UsageError("--grace-ms: a number");
    req.set_grace_ms(ms);
  }
  v1::DrainResponse resp;
  auto ctx = client.Context();
  if (auto st = client.EdgeAdmin(edge)->Drain(ctx.get(), req, &resp);
      !st.ok()) {
    return Report("drain " + edge, st);
  }
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
  } else {
    std::cout << "edge " << edge << " draining: " << resp.sessions()
              << " sessions open, grace " << req.grace_ms() << " ms\n";
  }
  return kOk;
}

int CountersCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {}, 0, 1)) return *bad;
  const std::string which = args.words.size() > 1 ? args.words[1] : "broker";
  if (which != "broker" && which != "edge") {
    return UsageError("counters: broker or edge, not '" + which + "'");
  }
  v1::GetCountersResponse resp;
  auto ctx = client.Context();
  const grpc::Status st =
      which == "broker" ? client.Admin()->GetCounters(ctx.get(), {}, &resp)
                        : client.EdgeAdmin(client.connection().edge_admin)
                              ->GetCounters(ctx.get(), {}, &resp);
  if (!st.ok()) return Report("counters " + which, st);
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  Table t({"NAME", "VALUE"});
  for (const auto& c : resp.counters()) {
    t.Add({c.name(), absl::StrCat(c.value())});
  }
  t.Print(std::cout);
  return kOk;
}

}  // namespace sinkline::cli
