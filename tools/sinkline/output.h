// What `sinkline` prints: aligned tables for people, JSON for scripts
// (protobuf's JSON mapping with the proto field names, as the Admin service
// answered), and the short forms of times, sizes and enum names.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <ostream>
#include <string>
#include <vector>

#include "sinkline/v1/admin.pb.h"

namespace sinkline::cli {

class Table {
 public:
  explicit Table(std::vector<std::string> headers)
      : headers_(std::move(headers)) {}
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  size_t size() const { return rows_.size(); }
  // Columns separated by two spaces; the last column is not padded.
  void Print(std::ostream& out) const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// One message as one line of JSON.
std::string ToJson(const google::protobuf::Message& message);
// A JSON string literal.
std::string JsonQuote(const std::string& text);

// "MESSAGE_STATE_HELD" -> "held", "EVENT_TYPE_EOD" -> "EOD",
// "FAILURE_POLICY_TEMPFAIL" -> "tempfail".
std::string StateName(v1::MessageState state);
std::string EventLabel(const v1::Binding& binding);
std::string PolicyName(v1::FailurePolicy policy);
std::string AccessName(v1::ContentAccess access);
// Age of `since` now, e.g. "42s", "5m", "3h", "2d".
std::string Age(const google::protobuf::Timestamp& since);
// Time left until `until` ("12s", "expired").
std::string Left(const google::protobuf::Timestamp& until);
// RFC 3339 UTC.
std::string TimeText(const google::protobuf::Timestamp& t);
// "<a@b>" ("<>" for the null sender).
std::string Path(const std::string& address);
// The text when not empty, "-" otherwise.
std::string OrDash(const std::string& text);

}  // namespace sinkline::cli
