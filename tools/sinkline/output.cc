#include "tools/sinkline/output.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sinkline::cli {
namespace {

using google::protobuf::util::TimeUtil;

std::string Strip(const std::string& name, absl::string_view prefix) {
  if (absl::StartsWith(name, prefix)) return name.substr(prefix.size());
  return name;
}

std::string Duration(int64_t s) {
  if (s < 120) return absl::StrCat(s, "s");
  if (s < 7200) return absl::StrCat(s / 60, "m");
  if (s < 2 * 86400) return absl::StrCat(s / 3600, "h");
  return absl::StrCat(s / 86400, "d");
}

}  // namespace

void Table::Print(std::ostream& out) const {
  std::vector<size_t> width(headers_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  };
  measure(headers_);
  for (const auto& r : rows_) measure(r);
  auto line = [&](const std::vector<std::string>& row) {
    std::string text;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i + 1 < row.size()) {
        absl::StrAppend(&text, row[i],
                        std::string(width[i] - row[i].size(), ' '), "  ");
      } else {
        absl::StrAppend(&text, row[i]);
      }
    }
    out << text << "\n";
  };
  line(headers_);
  for (const auto& r : rows_) line(r);
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string JsonQuote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string StateName(v1::MessageState state) {
  return absl::AsciiStrToLower(
      Strip(v1::MessageState_Name(state), "MESSAGE_STATE_"));
}

std::string EventLabel(const v1::Binding& binding) {
  if (binding.event() == v1::EVENT_TYPE_UNKNOWN) return binding.verb();
  return Strip(v1::EventType_Name(binding.event()), "EVENT_TYPE_");
}

std::string PolicyName(v1::FailurePolicy policy) {
  return absl::AsciiStrToLower(
      Strip(v1::FailurePolicy_Name(policy), "FAILURE_POLICY_"));
}

std::string AccessName(v1::ContentAccess access) {
  std::string s = absl::AsciiStrToLower(
      Strip(v1::ContentAccess_Name(access), "CONTENT_ACCESS_"));
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

std::string Age(const google::protobuf::Timestamp& since) {
  if (since.seconds() == 0 && since.nanos() == 0) return "-";
  const auto d = TimeUtil::GetCurrentTime() - since;
  return Duration(std::max<int64_t>(0, TimeUtil::DurationToSeconds(d)));
}

std::string Left(const google::protobuf::Timestamp& until) {
  const auto d = until - TimeUtil::GetCurrentTime();
  const int64_t s = TimeUtil::DurationToSeconds(d);
  return s < 0 ? "expired" : Duration(s);
}

std::string TimeText(const google::protobuf::Timestamp& t) {
  return TimeUtil::ToString(t);
}

std::string Path(const std::string& address) { return "<" + address + ">"; }

std::string OrDash(const std::string& text) {
  return text.empty() ? "-" : text;
}

}  // namespace sinkline::cli
