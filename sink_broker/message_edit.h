// Edits of a message on disk: header fields added, changed or deleted, the
// body replaced. The header block is parsed and rewritten; the body is
// copied in chunks, so memory stays bounded whatever the message's size.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sinkline/v1/types.pb.h"

namespace sinkline::broker {

// One header field as it stands: the raw bytes of all its lines, with CRLF.
struct HeaderField {
  std::string name;  // as written
  std::string raw;   // "Name: value\r\n" including continuation lines
};

struct ParsedHeader {
  std::vector<HeaderField> fields;
  // Offset of the first octet after the header block: after the empty line,
  // or the size of the message when there is none.
  uint64_t body_offset = 0;
  // True when the block ended with an empty line.
  bool has_separator = false;
};

// Parses the header block at the start of `data` (which must hold the whole
// block). A line that is not a field ends the block.
ParsedHeader ParseHeader(const std::string& data);

// Checks an edit: field names are printable ASCII without ':', values have
// no bare CR or LF (folding as CRLF + SP/HTAB is allowed).
absl::Status ValidateEdit(const sinkline::v1::ContentEdit& edit);

// Applies `edits` in order to the header in memory; body edits are returned
// through `new_body` (the last ReplaceBody wins).
absl::Status ApplyHeaderEdits(
    const std::vector<sinkline::v1::ContentEdit>& edits, ParsedHeader& header,
    const std::string** new_body);

// Rewrites the message at `in_path` into `out_path` with `edits` applied,
// fsyncs it (unless `sync` is false: a message before COMMIT, whose COMMIT
// fsyncs the file it ends up in), and returns its size. The header block is
// read whole (at most `max_header_bytes`); the body is streamed.
absl::StatusOr<uint64_t> RewriteMessage(
    const std::string& in_path, const std::string& out_path,
    const std::vector<sinkline::v1::ContentEdit>& edits,
    size_t max_header_bytes = 1 << 20, bool sync = true);

// The one check every envelope edit passes, whoever asks for it (a verdict,
// the Content service, an operator): set_sender a mailbox or "" (the null
// sender), add_recipient and remove_recipient mailboxes, recipient
// parameters ESMTP keyword=value; UTF-8 only when the transaction has
// SMTPUTF8 (`utf8`). Anything else is INVALID_ARGUMENT. The grammar is the
// edge's (sinkline/common/address.h).
absl::Status ValidateEnvelopeEdit(const v1::EnvelopeEdit& edit, bool utf8);
// Whether `envelope` was given with SMTPUTF8 (RFC 6531).
bool EnvelopeIsUtf8(const v1::Envelope& envelope);

// Applies envelope edits; returns whether anything changed.
bool ApplyEnvelopeEdits(
    const google::protobuf::RepeatedPtrField<v1::EnvelopeEdit>& edits,
    v1::Envelope& envelope);

}  // namespace sinkline::broker
