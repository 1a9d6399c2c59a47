// sinkline queue | show | release | hold | delete: messages the broker
// holds, like postqueue -p and postcat, and the operator's actions on one.
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tools/sinkline/commands.h"
#include "tools/sinkline/output.h"

namespace sinkline::cli {
namespace {

std::optional<v1::MessageState> ParseState(const std::string& text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (name.rfind("MESSAGE_STATE_", 0) != 0) name = "MESSAGE_STATE_" + name;
  v1::MessageState state;
  if (!v1::MessageState_Parse(name, &state)) return std::nullopt;
  return state;
}

std::string Recipients(const v1::Envelope& envelope) {
  std::vector<std::string> out;
  for (const auto& r : envelope.recipients()) out.push_back(r.address());
  return out.empty() ? "-" : absl::StrJoin(out, ",");
}

std::string Leases(const v1::MessageInfo& m) {
  std::vector<std::string> out;
  for (const auto& l : m.leases()) {
    out.push_back(absl::StrCat(l.binding(), "(", AccessName(l.access()), ")"));
  }
  return out.empty() ? "-" : absl::StrJoin(out, ",");
}

std::string LastHistory(const v1::MessageInfo& m) {
  return m.history().empty() ? "-" : m.history().rbegin()->what();
}

// What became of each recipient, as far as the message's state tells: the
// broker keeps only the recipients still to deliver (deferred) or refused
// (failed) in the envelope once it tried.
std::string RecipientState(const v1::MessageInfo& m) {
  switch (m.state()) {
    case v1::MESSAGE_STATE_RECEIVING:
    case v1::MESSAGE_STATE_LEASED:
      return "pending";
    case v1::MESSAGE_STATE_RELEASING:
      return m.reason().empty() ? "pending" : "deferred: " + m.reason();
    case v1::MESSAGE_STATE_SUBMITTED:
      return "delivered to the queue backend";
    case v1::MESSAGE_STATE_FAILED:
      return "refused: " + m.reason();
    default:
      return StateName(m.state());
  }
}

}  // namespace

int QueueCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {"state"}, 0, 0)) return *bad;
  v1::ListMessagesRequest req;
  if (auto s = args.Flag("state")) {
    auto state = ParseState(*s);
    if (!state) return UsageError("unknown state '" + *s + "'");
    req.set_state(*state);
  }
  v1::ListMessagesResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Admin()->ListMessages(ctx.get(), req, &resp); !st.ok()) {
    return Report("queue", st);
  }
  if (args.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  Table t(
      {"ID", "AGE", "SIZE", "SENDER", "RECIPIENTS", "STATE", "LEASES", "LAST"});
  uint64_t bytes = 0;
  for (const auto& m : resp.messages()) {
    bytes += m.size();
    t.Add({OrDash(m.queue_id()),
           m.history().empty() ? "-" : Age(m.history(0).time()),
           absl::StrCat(m.size()), Path(m.envelope().mail_from()),
           Recipients(m.envelope()), StateName(m.state()), Leases(m),
           LastHistory(m)});
  }
  t.Print(std::cout);
  std::cout << "-- " << t.size()
            << (t.size() == 1 ? " message, " : " messages, ") << bytes
            << " bytes\n";
  return kOk;
}

int ShowCommand(const Args& args, const Client& client) {
  if (auto bad = CheckUsage(args, {"body"}, 1, 1)) return *bad;
  const std::string& id = args.words[1];
  auto admin = client.Admin();
  v1::GetMessageRequest req;
  req.set_queue_id(id);
  v1::MessageInfo m;
  auto ctx = client.Context();
  if (auto st = admin->GetMessage(ctx.get(), req, &m); !st.ok()) {
    return Report("show " + id, st);
  }
  v1::ReadMessageRequest read;
  read.set_queue_id(id);
  read.set_headers_only(!args.Has("body"));
  v1::ReadMessageResponse content;
  auto rctx = client.Context();
  const grpc::Status read_status =
      admin->ReadMessage(rctx.get(), read, &content);
  // A message that left the spool has no content any more: the rest of
  // its record is still worth showing.
  if (!read_status.ok() &&
      read_status.error_code() != grpc::FAILED_PRECONDITION) {
    return Report("show " + id, read_status);
  }
  if (args.json) {
    std::cout << "{\"message\":" << ToJson(m);
    if (read_status.ok()) std::cout << ",\"content\":" << ToJson(content);
    std::cout << "}\n";
    return kOk;
  }
  std::cout << "queue id:    " << m.queue_id() << "\n"
            << "state:       " << StateName(m.state())
            << (m.reason().empty() ? "" : " (" + m.reason() + ")") << "\n"
            << "size:        " << m.size() << " octets\n"
            << "sender:      " << Path(m.envelope().mail_from()) << "\n";
  for (const auto& p : m.envelope().mail_params()) {
    std::cout << "  param      " << p.key()
              << (p.value().empty() ? "" : "=" + p.value()) << "\n";
  }
  std::cout << "recipients:\n";
  Table rcpts({"  RECIPIENT", "DELIVERY"});
  for (const auto& r : m.envelope().recipients()) {
    rcpts.Add({"  " + Path(r.address()), RecipientState(m)});
  }
  rcpts.Print(std::cout);
  std::cout << "leases:\n";
  Table leases({"  LEASE", "BINDING", "ACCESS", "EXPIRES"});
  for (const auto& l : m.leases()) {
    leases.Add({"  " + l.id(), l.binding(), AccessName(l.access()),
                Left(l.expires())});
  }
  leases.Print(std::cout);
  std::cout << "history:\n";
  for (const auto& h : m.history()) {
    std::cout << "  " << TimeText(h.time()) << "  " << h.what() << "\n";
  }
  if (!read_status.ok()) {
    std::cout << "content:     (" << read_status.error_message() << ")\n";
    return kOk;
  }
  std::cout << (args.Has("body") ? "content:\n" : "headers:\n");
  for (absl::string_view line : absl::StrSplit(content.data(), "\r\n")) {
    std::cout << "  " << line << "\n";
  }
  if (content.truncated()) {
    std::cout << "  ... (" << content.size() << " octets in all)\n";
  }
  return kOk;
}

int MessageActionCommand(const Args& args, const Client& client) {
  const std::string& verb = args.words.front();
  if (auto bad = CheckUsage(args,
                            verb == "hold"
                                ? std::initializer_list<const char*>{"reason"}
                                : std::initializer_list<const char*>{},
                            1, 1)) {
    return *bad;
  }
  const std::string& id = args.words[1];
  auto admin = client.Admin();
  auto ctx = client.Context();
  v1::MessageInfo m;
  grpc::Status st;
  if (verb == "release") {
    v1::ReleaseMessageRequest req;
    req.set_queue_id(id);
    st = admin->ReleaseMessage(ctx.get(), req, &m);
  } else if (verb == "hold") {
    v1::HoldMessageRequest req;
    req.set_queue_id(id);
    req.set_reason(args.Flag("reason").value_or(""));
    st = admin->HoldMessage(ctx.get(), req, &m);
  } else {
    v1::DeleteMessageRequest req;
    req.set_queue_id(id);
    st = admin->DeleteMessage(ctx.get(), req, &m);
  }
  if (!st.ok()) return Report(verb + " " + id, st);
  if (args.json) {
    std::cout << ToJson(m) << "\n";
    return kOk;
  }
  std::cout << id << ": " << StateName(m.state()) << "\n"
            << "history: " << LastHistory(m) << "\n";
  return kOk;
}

}  // namespace sinkline::cli
