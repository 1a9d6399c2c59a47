#include "sink_broker/dsn.h"

#include <filesystem>
#include <fstream>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/time_util.h"
#include "sink_broker/ids.h"
#include "sink_broker/message_edit.h"
#include "sinkline/common/durable_file.h"
#include "sinkline/common/metrics.h"
#include "sinkline/common/time.h"

namespace sinkline::broker {

namespace {

using google::protobuf::util::TimeUtil;

constexpr char kExpired[] = "delivery time expired";
// The original's header is returned up to this size (a header block is
// rarely more than a few KiB; the edge bounds it too).
constexpr size_t kMaxReturnedHeader = 256 * 1024;

std::string Param(const google::protobuf::RepeatedPtrField<v1::EsmtpParam>& ps,
                  absl::string_view key) {
  for (const auto& p : ps) {
    if (absl::EqualsIgnoreCase(p.key(), key)) return p.value();
  }
  return "";
}

// RFC 3461 xtext (ENVID, ORCPT): "+XX" is the octet 0xXX.
std::string DecodeXtext(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && i + 2 < s.size() && absl::ascii_isxdigit(s[i + 1]) &&
        absl::ascii_isxdigit(s[i + 2])) {
      out.push_back(static_cast<char>(
          std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Only printable ASCII (and UTF-8) in a header field's value.
std::string FieldValue(absl::string_view s) {
  std::string out;
  for (char c : s) out.push_back(c == '\r' || c == '\n' ? ' ' : c);
  return out;
}

std::string RfcDate(absl::Time t) {
  return absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", t,
                          absl::UTCTimeZone());
}

// The enhanced status code (RFC 3463) in a reply or reason; the class
// from the reply code, or 5.0.0, when it carries none.
std::string StatusOf(const RecipientRecord& r) {
  if (absl::StartsWith(r.reply, kExpired)) return "4.4.7";
  // Not a part of something longer, such as an IPv4 address.
  static const std::regex code(
      R"((?:^|[^\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.]))");
  std::smatch m;
  if (std::regex_search(r.reply, m, code)) return m.str(1);
  return "5.0.0";
}

// "smtp; 550 5.1.1 ..." when the reason quotes the next hop's reply.
std::string DiagnosticOf(const RecipientRecord& r) {
  static const std::regex reply(R"(\b[45]\d\d[ -].*$)");
  std::smatch m;
  if (std::regex_search(r.reply, m, reply)) {
    return absl::StrCat("smtp; ", FieldValue(m.str(0)));
  }
  return absl::StrCat("x-sinkline; ", FieldValue(r.reply));
}

bool WantsFailureNotice(const v1::Recipient& r) {
  const std::string notify = absl::AsciiStrToUpper(Param(r.params(), "NOTIFY"));
  if (notify.empty()) return true;  // RFC 3461 §4.1: FAILURE by default
  for (absl::string_view n : absl::StrSplit(notify, ',')) {
    if (n == "FAILURE") return true;
  }
  return false;  // NEVER, or SUCCESS/DELAY only
}

Counter& ReturnedCounter(const char* content) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_dsn_returned_total",
      "What of the original DSNs returned: full (RET=FULL), headers, "
      "headers_over_limit (RET=FULL but larger than --dsn-max-return-bytes, "
      "or binary).",
      {{"content", content}});
}

bool Has8Bit(absl::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return true;
  }
  return false;
}

std::string ReadHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string data(kMaxReturnedHeader, '\0');
  in.read(data.data(), data.size());
  data.resize(in.gcount());
  if (const auto end = data.find("\r\n\r\n"); end != std::string::npos) {
    data.resize(end + 2);
  }
  if (!data.empty() && !absl::EndsWith(data, "\r\n")) data += "\r\n";
  return data;
}

}  // namespace

ReturnedContent ContentToReturn(const v1::QueueEntry& original,
                                const std::string& content_path,
                                const DsnOptions& options) {
  const v1::Envelope& env = original.envelope();
  ReturnedContent out;
  if (absl::AsciiStrToUpper(Param(env.mail_params(), "RET")) == "FULL") {
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(content_path, ec);
    if (ec) {
      out.note = "The original message could not be read: " + ec.message();
    } else if (absl::AsciiStrToUpper(Param(env.mail_params(), "BODY")) ==
               "BINARYMIME") {
      out.note = absl::StrCat(
          "The original message (", size,
          " bytes) is binary (BODY=BINARYMIME), which a report cannot "
          "carry: only its header is returned.");
    } else if (size > options.max_return_bytes) {
      out.note = absl::StrCat("The original message (", size,
                              " bytes) is larger than this system returns (",
                              options.max_return_bytes,
                              " bytes): only its header is returned.");
    } else {
      std::ifstream in(content_path, std::ios::binary);
      std::string data(size, '\0');
      in.read(data.data(), data.size());
      data.resize(in.gcount());
      if (!data.empty() && !absl::EndsWith(data, "\r\n")) data += "\r\n";
      out.bytes = std::move(data);
      out.full = true;
      ReturnedCounter("full").Inc();
      return out;
    }
  }
  out.bytes = ReadHeader(content_path);
  ReturnedCounter(out.note.empty() ? "headers" : "headers_over_limit").Inc();
  return out;
}

std::vector<RecipientRecord> DsnRecipients(
    const v1::QueueEntry& original,
    const std::vector<RecipientRecord>& failed) {
  std::vector<RecipientRecord> out;
  if (original.envelope().mail_from().empty()) return out;  // RFC 5321 §6.1
  for (const auto& r : failed) {
    if (WantsFailureNotice(r.recipient)) out.push_back(r);
  }
  return out;
}

std::string BuildDsn(const v1::QueueEntry& original,
                     const std::vector<RecipientRecord>& recipients,
                     const std::string& original_header,
                     const std::string& reporting_mta,
                     const std::string& message_id, absl::Time now) {
  ReturnedContent returned;
  returned.bytes = original_header;
  return BuildDsn(original, recipients, returned, reporting_mta, message_id,
                  now);
}

std::string BuildDsn(const v1::QueueEntry& original,
                     const std::vector<RecipientRecord>& recipients,
                     const ReturnedContent& returned,
                     const std::string& reporting_mta,
                     const std::string& message_id, absl::Time now) {
  const v1::Envelope& env = original.envelope();
  const bool utf8 = EnvelopeIsUtf8(env);
  const std::string boundary =
      absl::StrCat("=_dsn_", message_id, "_", absl::ToUnixMicros(now));
  std::string out;
  absl::StrAppend(
      &out, "From: Mail Delivery System <MAILER-DAEMON@", reporting_mta,
      ">\r\n", "To: <", env.mail_from(), ">\r\n",
      "Subject: Undelivered Mail Returned to Sender\r\n",
      "Date: ", RfcDate(now), "\r\n", "Message-ID: <", message_id, "@",
      reporting_mta, ">\r\n", "Auto-Submitted: auto-replied\r\n",
      "MIME-Version: 1.0\r\n",
      "Content-Type: multipart/report; report-type=delivery-status;\r\n",
      "\tboundary=\"", boundary, "\"\r\n\r\n",
      "This is a MIME-encapsulated message.\r\n\r\n");

  // 1: for a person.
  absl::StrAppend(
      &out, "--", boundary, "\r\n", "Content-Description: Notification\r\n",
      "Content-Type: text/plain; charset=", utf8 ? "utf-8" : "us-ascii",
      "\r\n\r\n", "This is the mail system at host ", reporting_mta,
      ".\r\n\r\n",
      "Your message could not be delivered to one or more "
      "recipients.\r\n",
      "The next hop's reply for each is below.\r\n\r\n");
  for (const auto& r : recipients) {
    absl::StrAppend(&out, "<", r.recipient.address(),
                    ">: ", FieldValue(r.reply), "\r\n");
  }
  absl::StrAppend(&out, "\r\n");
  if (!returned.note.empty()) {
    absl::StrAppend(&out, FieldValue(returned.note), "\r\n\r\n");
  }

  // 2: for a program (RFC 3464 §2; RFC 6533 for UTF-8 addresses).
  const char* addr_type = utf8 ? "utf-8" : "rfc822";
  absl::StrAppend(&out, "--", boundary, "\r\n",
                  "Content-Description: Delivery report\r\n",
                  "Content-Type: message/",
                  utf8 ? "global-delivery-status" : "delivery-status",
                  "\r\n\r\n", "Reporting-MTA: dns; ", reporting_mta, "\r\n",
                  "X-Sinkline-Queue-ID: ", original.queue_id(), "\r\n");
  if (const std::string envid = Param(env.mail_params(), "ENVID");
      !envid.empty()) {
    absl::StrAppend(
        &out, "Original-Envelope-Id: ", FieldValue(DecodeXtext(envid)), "\r\n");
  }
  if (original.has_committed()) {
    absl::StrAppend(
        &out, "Arrival-Date: ",
        RfcDate(absl::FromUnixMillis(
            TimeUtil::TimestampToMilliseconds(original.committed()))),
        "\r\n");
  }
  for (const auto& r : recipients) {
    absl::StrAppend(&out, "\r\n");
    if (const std::string orcpt = Param(r.recipient.params(), "ORCPT");
        !orcpt.empty()) {
      absl::StrAppend(
          &out, "Original-Recipient: ", FieldValue(DecodeXtext(orcpt)), "\r\n");
    }
    absl::StrAppend(&out, "Final-Recipient: ", addr_type, "; ",
                    r.recipient.address(), "\r\n", "Action: failed\r\n",
                    "Status: ", StatusOf(r), "\r\n",
                    "Diagnostic-Code: ", DiagnosticOf(r), "\r\n",
                    "Last-Attempt-Date: ", RfcDate(now), "\r\n");
  }
  absl::StrAppend(&out, "\r\n");

  // 3: what was sent, whole (RET=FULL) or its header.
  absl::StrAppend(&out, "--", boundary, "\r\n");
  if (returned.full) {
    absl::StrAppend(
        &out, "Content-Description: Undelivered Message\r\n",
        "Content-Type: ", utf8 ? "message/global" : "message/rfc822", "\r\n");
    if (Has8Bit(returned.bytes)) {
      absl::StrAppend(&out, "Content-Transfer-Encoding: 8bit\r\n");
    }
  } else {
    absl::StrAppend(
        &out, "Content-Description: Undelivered Message Headers\r\n",
        "Content-Type: ",
        utf8 ? "message/global-headers" : "text/rfc822-headers", "\r\n");
  }
  absl::StrAppend(&out, "\r\n", returned.bytes, "\r\n", "--", boundary,
                  "--\r\n");
  return out;
}

absl::StatusOr<std::optional<v1::QueueEntry>> CommitDsn(
    const Spool& spool, const v1::QueueEntry& original,
    const std::vector<RecipientRecord>& failed, const DsnOptions& options) {
  const auto recipients = DsnRecipients(original, failed);
  if (recipients.empty()) return std::nullopt;
  std::string mta = original.session().server_hostname();
  if (mta.empty()) mta = "localhost";
  v1::QueueEntry dsn;
  dsn.set_queue_id(NewQueueId());
  // The original's content stays in committed/, also once it failed.
  const std::string path = spool.ContentPath(original.queue_id());
  const ReturnedContent returned = ContentToReturn(original, path, options);
  const std::string bytes = BuildDsn(original, recipients, returned, mta,
                                     dsn.queue_id(), absl::Now());
  auto* env = dsn.mutable_envelope();
  env->set_mail_from("");  // a DSN never causes another
  env->add_recipients()->set_address(original.envelope().mail_from());
  if (EnvelopeIsUtf8(original.envelope())) {
    env->add_mail_params()->set_key("SMTPUTF8");
  }
  if (returned.full && Has8Bit(returned.bytes)) {
    // The returned original is 8-bit: the report is too (never
    // downgraded; a next hop without 8BITMIME refuses it).
    auto* p = env->add_mail_params();
    p->set_key("BODY");
    p->set_value("8BITMIME");
  }
  *dsn.mutable_session() = original.session();
  dsn.set_transaction_id(absl::StrCat("dsn-", original.queue_id()));
  *dsn.mutable_committed() = sinkline::NowTimestamp();
  dsn.set_broker_id(original.broker_id());
  dsn.set_size(bytes.size());
  // Content first, then the envelope record: the record is what commits.
  if (auto st = WriteFileDurably(spool.ContentPath(dsn.queue_id()), bytes);
      !st.ok()) {
    return st;
  }
  if (auto st = spool.WriteEnvelope(dsn); !st.ok()) return st;
  MetricsRegistry::Default()
      .GetCounter("sinkline_broker_dsn_total",
                  "Delivery status notifications committed (RFC 3464), for "
                  "recipients that failed for good or expired.")
      .Inc();
  return dsn;
}

}  // namespace sinkline::broker
