#include "smtp_edge/reply.h"

#include "absl/strings/str_cat.h"

namespace sinkline::edge {

std::string Reply::Format() const {
  std::string out;
  const std::vector<std::string> none = {""};
  const auto& ls = lines.empty() ? none : lines;
  for (size_t i = 0; i < ls.size(); ++i) {
    absl::StrAppend(&out, code, i + 1 < ls.size() ? "-" : " ");
    if (!enhanced.empty()) absl::StrAppend(&out, enhanced, " ");
    absl::StrAppend(&out, ls[i], "\r\n");
  }
  return out;
}

Reply Reply::FromProto(const v1::Reply& r) {
  Reply out;
  out.code = static_cast<int>(r.code());
  out.enhanced = r.enhanced_code();
  out.lines.assign(r.lines().begin(), r.lines().end());
  return out;
}

v1::Reply Reply::ToProto() const {
  v1::Reply r;
  r.set_code(code);
  r.set_enhanced_code(enhanced);
  for (const auto& l : lines) r.add_lines(l);
  return r;
}

}  // namespace sinkline::edge
