#include "sinks/recipient_policy/recipient_policy.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkline::sinks {

absl::StatusOr<RecipientList> RecipientList::Parse(absl::string_view text) {
  RecipientList list;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const std::string entry = absl::AsciiStrToLower(line);
    const size_t at = entry.rfind('@');
    const bool bad = at == std::string::npos || at + 1 == entry.size() ||
                     entry.find_first_of(" \t") != std::string::npos;
    if (bad) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": \"", line,
                       "\" is neither local@domain nor @domain"));
    }
    if (at == 0) {
      list.domains_.insert(entry.substr(1));
    } else {
      list.addresses_.insert(entry);
    }
  }
  return list;
}

bool RecipientList::Accepts(absl::string_view address) const {
  const std::string lower = absl::AsciiStrToLower(address);
  if (addresses_.count(lower) > 0) return true;
  const size_t at = lower.rfind('@');
  if (at == std::string::npos) return false;
  return domains_.count(lower.substr(at + 1)) > 0;
}

absl::StatusOr<std::unique_ptr<RecipientPolicySink>>
RecipientPolicySink::Create(std::string path, absl::Duration check_interval,
                            std::string reject_text) {
  std::unique_ptr<RecipientPolicySink> sink(new RecipientPolicySink(
      std::move(path), check_interval, std::move(reject_text)));
  if (absl::Status st = sink->MaybeReload(/*force=*/true); !st.ok()) return st;
  return sink;
}

absl::Status RecipientPolicySink::MaybeReload(bool force) {
  // Called with mu_ held (or before the sink serves).
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path_, ": ", std::strerror(errno)));
  }
  FileId id;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  id.size = st.st_size;
  id.mtime = st.st_mtim;
  if (!force && id == loaded_) return absl::OkStatus();
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path_, ": cannot open"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto list = RecipientList::Parse(text.str());
  if (!list.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", list.status().message()));
  }
  list_ = *std::move(list);
  loaded_ = id;
  spdlog::info("recipient list {}: {} entries", path_, list_.size());
  return absl::OkStatus();
}

bool RecipientPolicySink::Accepts(absl::string_view address) {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = absl::Now();
  if (now - last_check_ >= check_interval_) {
    last_check_ = now;
    if (absl::Status st = MaybeReload(/*force=*/false); !st.ok()) {
      spdlog::error("keeping the previous recipient list: {}", st.ToString());
    }
  }
  return list_.Accepts(address);
}

void RecipientPolicySink::OnRcpt(sdk::EventContext& ctx) {
  if (!Accepts(ctx.recipient())) {
    ctx.Reject(550, "5.1.1", reject_text_);
  }
}

}  // namespace sinkline::sinks
