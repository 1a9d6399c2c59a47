// An SMTP reply as a value: code, enhanced status code, text lines.
#pragma once

#include <string>
#include <vector>

#include "sinkline/v1/types.pb.h"

namespace sinkline::edge {

struct Reply {
  int code = 0;
  std::string enhanced;  // "2.1.0", or empty for replies that take none
  std::vector<std::string> lines;

  // Wire form: "250-first\r\n250 last\r\n", the enhanced code on each line.
  std::string Format() const;
  bool positive() const { return code >= 200 && code < 400; }

  static Reply FromProto(const v1::Reply& r);
  v1::Reply ToProto() const;
};

inline Reply MakeReply(int code, std::string enhanced, std::string text) {
  return Reply{code, std::move(enhanced), {std::move(text)}};
}

}  // namespace sinkline::edge
