#include "sinks/greylist/greylist.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "sinkline/common/metrics.h"
#include "sinkline/sdk/files.h"

namespace sinkline::sinks {

namespace {

constexpr absl::string_view kStateHeader =
    "# sinkline greylist state v1: first_seen_ms last_seen_ms passed network "
    "sender recipient\n";

void Count(const char* decision) {
  MetricsRegistry::Default()
      .GetCounter("sinkline_greylist_checks_total",
                  "Recipients the greylist sink checked, by decision.",
                  {{"decision", decision}})
      .Inc();
}

}  // namespace

std::string ClientNetwork(absl::string_view ip) {
  const std::string text(ip);
  unsigned char addr[16];
  char out[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, text.c_str(), addr) == 1) {
    addr[3] = 0;
    inet_ntop(AF_INET, addr, out, sizeof(out));
    return absl::StrCat(out, "/24");
  }
  if (inet_pton(AF_INET6, text.c_str(), addr) == 1) {
    // An IPv4-mapped address is the IPv4 client it maps.
    static const unsigned char kMapped[12] = {0, 0, 0, 0, 0,    0,
                                              0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(addr, kMapped, 12) == 0) {
      addr[15] = 0;
      inet_ntop(AF_INET, addr + 12, out, sizeof(out));
      return absl::StrCat(out, "/24");
    }
    std::memset(addr + 8, 0, 8);
    inet_ntop(AF_INET6, addr, out, sizeof(out));
    return absl::StrCat(out, "/64");
  }
  return absl::AsciiStrToLower(ip);
}

std::string Greylist::Key(absl::string_view client_ip, absl::string_view sender,
                          absl::string_view recipient) {
  return absl::StrCat(ClientNetwork(client_ip), "\t",
                      sender.empty() ? "<>" : absl::AsciiStrToLower(sender),
                      "\t", absl::AsciiStrToLower(recipient));
}

Greylist::Greylist(GreylistOptions options, std::function<absl::Time()> now)
    : options_(std::move(options)), now_(std::move(now)) {}

Greylist::~Greylist() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  if (absl::Status st = Save(); !st.ok()) {
    spdlog::error("greylist: saving the state: {}", st.ToString());
  }
}

size_t Greylist::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

absl::Status Greylist::Load() {
  if (options_.state_file.empty()) return absl::OkStatus();
  struct stat st;
  if (::stat(options_.state_file.c_str(), &st) != 0 && errno == ENOENT) {
    return absl::OkStatus();  // first start
  }
  std::ifstream in(options_.state_file, std::ios::binary);
  if (!in) {
    return absl::PermissionDeniedError(
        absl::StrCat(options_.state_file, ": cannot open"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();
  int line_number = 0, skipped = 0;
  for (absl::string_view line : absl::StrSplit(text.str(), '\n')) {
    ++line_number;
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, '\t');
    int64_t first = 0, last = 0;
    if (f.size() != 6 || !absl::SimpleAtoi(f[0], &first) ||
        !absl::SimpleAtoi(f[1], &last) || (f[2] != "0" && f[2] != "1")) {
      ++skipped;
      continue;
    }
    Entry e;
    e.first_seen = absl::FromUnixMillis(first);
    e.last_seen = absl::FromUnixMillis(last);
    e.passed = f[2] == "1";
    entries_[absl::StrCat(f[3], "\t", f[4], "\t", f[5])] = e;
  }
  if (skipped > 0) {
    spdlog::warn("greylist: {}: skipped {} malformed lines",
                 options_.state_file, skipped);
  }
  ExpireLocked(now_());
  spdlog::info("greylist: {} triplets from {}", entries_.size(),
               options_.state_file);
  return absl::OkStatus();
}

void Greylist::ExpireLocked(absl::Time now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    const Entry& e = it->second;
    const bool expired = e.passed ? now - e.last_seen > options_.expire
                                  : now - e.first_seen > options_.retry_window;
    if (expired) {
      it = entries_.erase(it);
      dirty_ = true;
    } else {
      ++it;
    }
  }
}

absl::Status Greylist::Save() {
  if (options_.state_file.empty()) return absl::OkStatus();
  std::string text(kStateHeader);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ExpireLocked(now_());
    for (const auto& [key, e] : entries_) {
      absl::StrAppend(&text, absl::ToUnixMillis(e.first_seen), "\t",
                      absl::ToUnixMillis(e.last_seen), "\t",
                      e.passed ? "1" : "0", "\t", key, "\n");
    }
    dirty_ = false;
  }
  std::lock_guard<std::mutex> save_lock(save_mu_);
  const std::string& path = options_.state_file;
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos
                              ? "."
                              : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string name =
      slash == std::string::npos ? path : path.substr(slash + 1);
  return sdk::WriteFileAtomically(dir, name, text);
}

void Greylist::StartFlusher() {
  if (options_.state_file.empty()) return;
  flusher_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait(lock, [this] { return stop_ || dirty_; });
      if (stop_) break;
      // Let changes gather for a while, then write them in one go.
      cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.flush_interval),
                   [this] { return stop_; });
      lock.unlock();
      if (absl::Status st = Save(); !st.ok()) {
        spdlog::error("greylist: saving the state: {}", st.ToString());
      }
      lock.lock();
    }
  });
}

Greylist::Decision Greylist::Check(absl::string_view client_ip,
                                   absl::string_view sender,
                                   absl::string_view recipient) {
  const std::string key = Key(client_ip, sender, recipient);
  const absl::Time now = now_();
  Decision decision;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      const Entry& e = it->second;
      const bool expired = e.passed
                               ? now - e.last_seen > options_.expire
                               : now - e.first_seen > options_.retry_window;
      if (expired) {
        entries_.erase(it);
        it = entries_.end();
      }
    }
    if (it == entries_.end()) {
      entries_[key] = Entry{now, now, false};
      decision = Decision::kFirstSeen;
      dirty_ = true;
    } else if (it->second.passed) {
      it->second.last_seen = now;
      decision = Decision::kKnown;
      dirty_ = true;
    } else if (now - it->second.first_seen < options_.delay) {
      decision = Decision::kTooEarly;
    } else {
      it->second.passed = true;
      it->second.last_seen = now;
      decision = Decision::kPassed;
      dirty_ = true;
    }
  }
  if (decision != Decision::kTooEarly) cv_.notify_all();
  return decision;
}

void GreylistSink::OnRcpt(sdk::EventContext& ctx) {
  const auto decision = greylist_.Check(
      ctx.session().client().ip(), ctx.envelope().mail_from(), ctx.recipient());
  switch (decision) {
    case Greylist::Decision::kFirstSeen:
      Count("first_seen");
      ctx.Reject(451, "4.7.1", reply_text_);
      break;
    case Greylist::Decision::kTooEarly:
      Count("too_early");
      ctx.Reject(451, "4.7.1", reply_text_);
      break;
    case Greylist::Decision::kPassed:
      Count("passed");
      break;
    case Greylist::Decision::kKnown:
      Count("known");
      break;
  }
}

}  // namespace sinkline::sinks
