// The content of a message in the session (session.h): DATA lines, BDAT
// chunks, and the end of data that raises EOD.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "smtp_edge/commands.h"
#include "smtp_edge/session.h"

namespace sinkline::edge {

void Session::StartContent() {
  chunk_.clear();
  message_size_ = 0;
  line_start_ = true;
  prev_crlf_ = true;
  last_char_ = '\n';
  line_len_ = 0;
  bad_line_ending_ = line_too_long_ = too_big_ = false;
}

// DATA: only <CRLF>.<CRLF> ends the message. Lines are unstuffed and
// streamed to the broker in chunks; a bare CR or LF, a line over the limit,
// or a message over the size limit is read to its end and then refused.
bool Session::ProcessData() {
  while (true) {
    const size_t lf = in_.find('\n');
    if (lf == std::string::npos) {
      if (in_.size() > limits_.max_text_line) {
        // A line that long is refused anyway; keep memory bounded.
        std::string piece = std::move(in_);
        in_.clear();
        DataLine(piece, false);
      }
      return false;
    }
    const std::string line = in_.substr(0, lf + 1);
    in_.erase(0, lf + 1);
    const bool crlf = lf > 0 ? line[lf - 1] == '\r' : last_char_ == '\r';
    if (line_start_ && prev_crlf_ && line == ".\r\n") {
      EndOfData();
      return true;
    }
    // prev_crlf_ keeps what the client sent: a line after a bare LF never
    // ends DATA, normalized or not.
    prev_crlf_ = crlf;
    if (crlf) {
      DataLine(line, true);
    } else if (limits_.normalize_bare_lf) {
      DataLine(absl::StrCat(absl::string_view(line).substr(0, lf), "\r\n"),
               true);
    } else {
      DataLine(line, true);
      bad_line_ending_ = true;
    }
    if (mode_ != Mode::kData) return true;
  }
}

void Session::DataLine(absl::string_view piece, bool complete) {
  line_len_ += piece.size();
  if (line_len_ > limits_.max_text_line) line_too_long_ = true;
  // A CR anywhere but right before the line's LF is a bare CR.
  const size_t body = complete ? piece.size() - 1 : piece.size();
  for (size_t i = 0; i < body; ++i) {
    if (piece[i] == '\r' && !(complete && i + 2 == piece.size())) {
      bad_line_ending_ = true;
    }
  }
  if (line_start_ && !piece.empty() && piece[0] == '.') piece.remove_prefix(1);
  last_char_ = piece.empty() ? last_char_ : piece.back();
  line_start_ = complete;
  if (complete) line_len_ = 0;
  message_size_ += piece.size();
  if (message_size_ > limits_.max_message_size) too_big_ = true;
  if (too_big_ || bad_line_ending_ || line_too_long_) {
    chunk_.clear();  // refused at the end; stop sending content
    return;
  }
  chunk_.append(piece.data(), piece.size());
  if (chunk_.size() >= limits_.chunk_size) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
}

// BDAT octets: no dot-stuffing and no end marker, but the same rules for
// line endings, line length and size as DATA.
bool Session::ProcessBdat() {
  if (bdat_.remaining > 0) {
    if (in_.empty()) return false;
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(in_.size(), bdat_.remaining));
    if (bdat_.refusal.code == 0) BdatBytes(absl::string_view(in_).substr(0, n));
    in_.erase(0, n);
    bdat_.remaining -= n;
    if (bdat_.remaining > 0) return false;
  }
  EndOfChunk();
  return true;
}

void Session::BdatBytes(absl::string_view piece) {
  for (char c : piece) {
    if ((c == '\n' && last_char_ != '\r') ||
        (last_char_ == '\r' && c != '\n')) {
      bad_line_ending_ = true;
    }
    line_len_ = c == '\n' ? 0 : line_len_ + 1;
    // The limit counts the CRLF; the CR is counted here, the LF is one more.
    if (line_len_ + 1 > limits_.max_text_line) line_too_long_ = true;
    last_char_ = c;
  }
  message_size_ += piece.size();
  if (message_size_ > limits_.max_message_size) too_big_ = true;
  if (too_big_ || bad_line_ending_ || line_too_long_) {
    chunk_.clear();
    return;
  }
  chunk_.append(piece.data(), piece.size());
  if (chunk_.size() >= limits_.chunk_size) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
}

void Session::EndOfChunk() {
  mode_ = Mode::kCommand;
  const BdatChunk b = bdat_;
  bdat_ = {};
  if (b.refusal.code != 0) {
    Reply(b.refusal);
    return;
  }
  // A message that cannot end well is refused at once, not at LAST.
  const bool ends_badly = b.last && last_char_ == '\r';
  if (too_big_ || bad_line_ending_ || line_too_long_ || ends_badly) {
    if (ends_badly) bad_line_ending_ = true;
    EndOfData();
    return;
  }
  const Command cmd{"BDAT", absl::StrCat(b.size, b.last ? " LAST" : "")};
  const edge::Reply native =
      MakeReply(250, "2.0.0", absl::StrCat("Ok: ", b.size, " octets received"));
  v1::Event event = MakeEvent(v1::EVENT_TYPE_BDAT, cmd, native);
  event.set_chunk_size(b.size);
  event.set_last_chunk(b.last);
  if (!b.last) {
    Dispatch(FindCommand("BDAT"), cmd, std::move(event), native);
    return;
  }
  // The last chunk's answer is the EOD's (the COMMIT).
  out_->SendEvent(event, /*notify_only=*/true);
  EndOfData();
}

void Session::EndOfData() {
  mode_ = Mode::kCommand;
  metric_verb_ = "EOD";
  edge::Reply refusal;
  if (too_big_) {
    refusal = MakeReply(552, "5.3.4", "Error: message size exceeds limit");
  } else if (bad_line_ending_) {
    refusal = MakeReply(550, "5.6.0",
                        "Error: bare CR or LF in message; lines must end "
                        "with CRLF");
  } else if (line_too_long_) {
    refusal = MakeReply(550, "5.6.0",
                        absl::StrCat("Error: message line longer than ",
                                     limits_.max_text_line, " octets"));
  }
  if (refusal.code != 0) {
    // The broker drops the content when the next transaction starts.
    chunk_.clear();
    ResetTransaction();
    Reply(refusal);
    return;
  }
  if (broker_lost_) {
    chunk_.clear();
    ResetTransaction();
    Reply(MakeReply(451, "4.3.0",
                    "Error: queue unavailable, message not accepted"));
    return;
  }
  if (!chunk_.empty()) {
    out_->SendData(transaction_id_, std::move(chunk_));
    chunk_.clear();
  }
  const edge::Reply native = MakeReply(250, "2.0.0", "Ok");
  v1::Event eod = MakeEvent(v1::EVENT_TYPE_EOD, Command{}, native);
  eod.set_message_size(message_size_);
  Dispatch(&kEodEvent, Command{}, std::move(eod), native);
}

}  // namespace sinkline::edge
