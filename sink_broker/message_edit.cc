#include "sink_broker/message_edit.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sinkline/common/address.h"
#include "sinkline/common/durable_file.h"

namespace sinkline::broker {
namespace {

bool IsFieldNameChar(char c) { return c >= 33 && c <= 126 && c != ':'; }

absl::Status CheckName(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("empty header name");
  for (char c : name) {
    if (!IsFieldNameChar(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("header name '", absl::CEscape(name),
                       "' has a character outside printable ASCII or ':'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckValue(const std::string& value) {
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '\r') {
      if (i + 2 >= value.size() || value[i + 1] != '\n' ||
          (value[i + 2] != ' ' && value[i + 2] != '\t')) {
        return absl::InvalidArgumentError(
            "header value has a CR or LF that is not folding (CRLF + "
            "space)");
      }
      ++i;
    } else if (c == '\n' || c == '\0') {
      return absl::InvalidArgumentError("header value has a bare LF or NUL");
    }
  }
  return absl::OkStatus();
}

std::string FieldLine(const std::string& name, const std::string& value) {
  return absl::StrCat(name, ": ", value, "\r\n");
}

// Index of the n-th (1-based) field named `name`, or -1.
int FindOccurrence(const ParsedHeader& h, const std::string& name,
                   uint32_t occurrence) {
  uint32_t seen = 0;
  for (size_t i = 0; i < h.fields.size(); ++i) {
    if (absl::EqualsIgnoreCase(h.fields[i].name, name) &&
        ++seen == occurrence) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

}  // namespace

ParsedHeader ParseHeader(const std::string& data) {
  ParsedHeader h;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t eol = data.find("\r\n", pos);
    const size_t line_end = eol == std::string::npos ? data.size() : eol + 2;
    if (eol == pos) {  // the empty line
      h.has_separator = true;
      h.body_offset = pos + 2;
      return h;
    }
    const char first = data[pos];
    if ((first == ' ' || first == '\t') && !h.fields.empty()) {
      h.fields.back().raw.append(data, pos, line_end - pos);
    } else {
      size_t colon = data.find(':', pos);
      bool is_field =
          colon != std::string::npos && colon < line_end && colon > pos;
      for (size_t i = pos; is_field && i < colon; ++i) {
        if (!IsFieldNameChar(data[i])) is_field = false;
      }
      if (!is_field) {  // not a header line: the body starts here
        h.body_offset = pos;
        return h;
      }
      h.fields.push_back(
          {data.substr(pos, colon - pos), data.substr(pos, line_end - pos)});
    }
    pos = line_end;
  }
  h.body_offset = data.size();
  return h;
}

absl::Status ValidateEdit(const v1::ContentEdit& edit) {
  switch (edit.edit_case()) {
    case v1::ContentEdit::kAddHeader:
      if (auto st = CheckName(edit.add_header().name()); !st.ok()) return st;
      return CheckValue(edit.add_header().value());
    case v1::ContentEdit::kChangeHeader:
      if (edit.change_header().occurrence() == 0) {
        return absl::InvalidArgumentError("occurrence counts from 1");
      }
      if (auto st = CheckName(edit.change_header().name()); !st.ok()) return st;
      return CheckValue(edit.change_header().value());
    case v1::ContentEdit::kDeleteHeader:
      if (edit.delete_header().occurrence() == 0) {
        return absl::InvalidArgumentError("occurrence counts from 1");
      }
      return CheckName(edit.delete_header().name());
    case v1::ContentEdit::kReplaceBody:
    case v1::ContentEdit::kWriteRange:
      return absl::OkStatus();
    case v1::ContentEdit::EDIT_NOT_SET:
      return absl::InvalidArgumentError("empty content edit");
  }
  return absl::InvalidArgumentError("unknown content edit");
}

absl::Status ApplyHeaderEdits(const std::vector<v1::ContentEdit>& edits,
                              ParsedHeader& h, const std::string** new_body) {
  // A last field that ends the message without its CRLF gets one, so that
  // a field added after it is a field of its own.
  if (!edits.empty() && !h.fields.empty() &&
      !absl::EndsWith(h.fields.back().raw, "\r\n")) {
    h.fields.back().raw += "\r\n";
  }
  for (const auto& edit : edits) {
    if (auto st = ValidateEdit(edit); !st.ok()) return st;
    switch (edit.edit_case()) {
      case v1::ContentEdit::kAddHeader: {
        const auto& a = edit.add_header();
        HeaderField f{a.name(), FieldLine(a.name(), a.value())};
        size_t at = 0;
        if (a.position().where_case() == v1::HeaderPosition::kAppend) {
          at = h.fields.size();
        } else if (a.position().where_case() == v1::HeaderPosition::kIndex) {
          at = std::min<size_t>(a.position().index(), h.fields.size());
        }
        h.fields.insert(h.fields.begin() + at, std::move(f));
        break;
      }
      case v1::ContentEdit::kChangeHeader: {
        const auto& c = edit.change_header();
        int i = FindOccurrence(h, c.name(), c.occurrence());
        if (i < 0) {
          // Like milter's chgheader: changing a field that is not there adds
          // it.
          h.fields.push_back({c.name(), FieldLine(c.name(), c.value())});
        } else {
          h.fields[i].raw = FieldLine(h.fields[i].name, c.value());
        }
        break;
      }
      case v1::ContentEdit::kDeleteHeader: {
        const auto& d = edit.delete_header();
        int i = FindOccurrence(h, d.name(), d.occurrence());
        if (i >= 0) h.fields.erase(h.fields.begin() + i);
        break;
      }
      case v1::ContentEdit::kReplaceBody:
        *new_body = &edit.replace_body().body();
        break;
      default:
        break;
    }
  }
  return absl::OkStatus();
}

namespace {

// Header edits and body replacement: the header block parsed and rewritten,
// the body streamed.
absl::StatusOr<uint64_t> RewriteHeaderAndBody(
    const std::string& in_path, const std::string& out_path,
    const std::vector<v1::ContentEdit>& edits, size_t max_header_bytes,
    bool sync) {
  int in = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    return absl::NotFoundError(absl::StrCat(in_path, ": ", strerror(errno)));
  }
  // Read until the header block is complete (or the limit).
  std::string head;
  char buf[65536];
  bool eof = false;
  while (head.find("\r\n\r\n") == std::string::npos &&
         !(head.rfind("\r\n", 0) == 0) && head.size() < max_header_bytes) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
      break;
    }
    head.append(buf, static_cast<size_t>(n));
  }
  ParsedHeader h = ParseHeader(head);
  if (!eof && h.body_offset == head.size() && !h.has_separator) {
    ::close(in);
    return absl::ResourceExhaustedError(
        absl::StrCat("header block larger than ", max_header_bytes, " octets"));
  }
  const std::string* new_body = nullptr;
  if (auto st = ApplyHeaderEdits(edits, h, &new_body); !st.ok()) {
    ::close(in);
    return st;
  }
  int out =
      ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) {
    ::close(in);
    return absl::UnavailableError(
        absl::StrCat(out_path, ": ", strerror(errno)));
  }
  uint64_t size = 0;
  absl::Status st;
  std::string block;
  for (const auto& f : h.fields) block += f.raw;
  // A message without a header whose body starts with white space: once
  // fields precede it, its first line would read as their continuation, so
  // the empty line that ends a header goes between them.
  const bool body_looks_folded =
      h.body_offset < head.size() &&
      (head[h.body_offset] == ' ' || head[h.body_offset] == '\t');
  if (h.has_separator || new_body != nullptr ||
      (body_looks_folded && !h.fields.empty())) {
    block += "\r\n";
  }
  st = WriteAll(out, block);
  size += block.size();
  if (st.ok() && new_body != nullptr) {
    st = WriteAll(out, *new_body);
    size += new_body->size();
  } else if (st.ok()) {
    // The rest of what was read, then the rest of the file.
    const size_t rest = head.size() - h.body_offset;
    st = WriteAll(out, absl::string_view(head.data() + h.body_offset, rest));
    size += rest;
    while (st.ok()) {
      ssize_t n = ::read(in, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        st = absl::UnavailableError(absl::StrCat("read: ", strerror(errno)));
      }
      if (n <= 0) break;
      st = WriteAll(out, absl::string_view(buf, static_cast<size_t>(n)));
      size += static_cast<uint64_t>(n);
    }
  }
  if (st.ok() && sync && ::fsync(out) != 0) {
    st = absl::UnavailableError(absl::StrCat("fsync: ", strerror(errno)));
  }
  ::close(out);
  ::close(in);
  if (!st.ok()) return st;
  return size;
}

// A range write: the message copied, the octets written at their offset,
// the rest cut if asked.
absl::StatusOr<uint64_t> RewriteRange(const std::string& in_path,
                                      const std::string& out_path,
                                      const v1::WriteRange& w, bool sync) {
  int in = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    return absl::NotFoundError(absl::StrCat(in_path, ": ", strerror(errno)));
  }
  int out =
      ::open(out_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) {
    ::close(in);
    return absl::UnavailableError(
        absl::StrCat(out_path, ": ", strerror(errno)));
  }
  absl::Status st;
  uint64_t size = 0;
  char buf[65536];
  while (st.ok()) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      st = absl::UnavailableError(absl::StrCat("read: ", strerror(errno)));
    if (n <= 0) break;
    st = WriteAll(out, absl::string_view(buf, static_cast<size_t>(n)));
    size += static_cast<uint64_t>(n);
  }
  if (st.ok() && w.offset() > size) {
    st = absl::OutOfRangeError(absl::StrCat("write at offset ", w.offset(),
                                            " past the end of the message (",
                                            size, " octets)"));
  }
  if (st.ok()) {
    const std::string& data = w.data();
    size_t done = 0;
    while (st.ok() && done < data.size()) {
      ssize_t n = ::pwrite(out, data.data() + done, data.size() - done,
                           static_cast<off_t>(w.offset() + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        st = absl::UnavailableError(absl::StrCat("write: ", strerror(errno)));
        break;
      }
      done += static_cast<size_t>(n);
    }
    const uint64_t end = w.offset() + data.size();
    if (w.truncate()) {
      if (st.ok() && ::ftruncate(out, static_cast<off_t>(end)) != 0) {
        st =
            absl::UnavailableError(absl::StrCat("truncate: ", strerror(errno)));
      }
      size = end;
    } else {
      size = std::max(size, end);
    }
  }
  if (st.ok() && sync && ::fsync(out) != 0) {
    st = absl::UnavailableError(absl::StrCat("fsync: ", strerror(errno)));
  }
  ::close(out);
  ::close(in);
  if (!st.ok()) return st;
  return size;
}

}  // namespace

absl::StatusOr<uint64_t> RewriteMessage(
    const std::string& in_path, const std::string& out_path,
    const std::vector<v1::ContentEdit>& edits, size_t max_header_bytes,
    bool sync) {
  // Runs of header and body edits go through one header rewrite each; a
  // range write addresses the message as the edits before it left it.
  std::string current = in_path;
  absl::StatusOr<uint64_t> size = uint64_t{0};
  size_t i = 0, step = 0;
  do {
    size_t j = i;
    if (j < edits.size() && edits[j].has_write_range()) {
      ++j;
    } else {
      while (j < edits.size() && !edits[j].has_write_range()) ++j;
    }
    const std::string next =
        j >= edits.size() ? out_path : absl::StrCat(out_path, ".", ++step);
    // Intermediate files are unlinked at the next step: only the last is
    // synced, and only when asked.
    const bool sync_this = sync && next == out_path;
    if (i < edits.size() && edits[i].has_write_range()) {
      size = RewriteRange(current, next, edits[i].write_range(), sync_this);
    } else {
      std::vector<v1::ContentEdit> run(edits.begin() + i, edits.begin() + j);
      size =
          RewriteHeaderAndBody(current, next, run, max_header_bytes, sync_this);
    }
    if (current != in_path) ::unlink(current.c_str());
    if (!size.ok()) {
      ::unlink(next.c_str());
      return size;
    }
    current = next;
    i = j;
  } while (i < edits.size());
  return size;
}

absl::Status ValidateEnvelopeEdit(const v1::EnvelopeEdit& e, bool utf8) {
  switch (e.edit_case()) {
    case v1::EnvelopeEdit::kSetSender:
      return ValidateEnvelopeAddress(e.set_sender(), /*null_allowed=*/true,
                                     utf8);
    case v1::EnvelopeEdit::kAddRecipient:
      if (auto st = ValidateEnvelopeAddress(e.add_recipient().address(),
                                            /*null_allowed=*/false, utf8);
          !st.ok()) {
        return st;
      }
      for (const auto& p : e.add_recipient().params()) {
        if (auto st = ValidateEsmtpParam(p.key(), p.value(), utf8); !st.ok()) {
          return st;
        }
      }
      return absl::OkStatus();
    case v1::EnvelopeEdit::kRemoveRecipient:
      return ValidateEnvelopeAddress(e.remove_recipient(),
                                     /*null_allowed=*/false, utf8);
    default:
      return absl::InvalidArgumentError("empty envelope edit");
  }
}

bool EnvelopeIsUtf8(const v1::Envelope& envelope) {
  for (const auto& p : envelope.mail_params()) {
    if (absl::EqualsIgnoreCase(p.key(), "SMTPUTF8")) return true;
  }
  return false;
}

bool ApplyEnvelopeEdits(
    const google::protobuf::RepeatedPtrField<v1::EnvelopeEdit>& edits,
    v1::Envelope& env) {
  bool changed = false;
  for (const auto& e : edits) {
    switch (e.edit_case()) {
      case v1::EnvelopeEdit::kSetSender:
        env.set_mail_from(e.set_sender());
        changed = true;
        break;
      case v1::EnvelopeEdit::kAddRecipient: {
        bool present = false;
        for (const auto& r : env.recipients()) {
          present |=
              absl::EqualsIgnoreCase(r.address(), e.add_recipient().address());
        }
        if (!present) {
          *env.add_recipients() = e.add_recipient();
          changed = true;
        }
        break;
      }
      case v1::EnvelopeEdit::kRemoveRecipient: {
        auto* rcpts = env.mutable_recipients();
        for (int i = 0; i < rcpts->size(); ++i) {
          if (absl::EqualsIgnoreCase(rcpts->Get(i).address(),
                                     e.remove_recipient())) {
            rcpts->DeleteSubrange(i, 1);
            changed = true;
            break;
          }
        }
        break;
      }
      default:
        break;
    }
  }
  return changed;
}

}  // namespace sinkline::broker
