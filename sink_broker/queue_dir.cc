#include "sink_broker/queue_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "sinkline/common/durable_file.h"

namespace sinkline::broker {
namespace fs = std::filesystem;

namespace {
absl::Status QueueErrno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}
}  // namespace

absl::StatusOr<std::unique_ptr<QueueDirBackend>> QueueDirBackend::Create(
    const std::string& dir) {
  std::error_code ec;
  for (const char* sub : {"tmp", "new"}) {
    fs::create_directories(fs::path(dir) / sub, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create ", dir, "/", sub, ": ", ec.message()));
    }
  }
  return std::unique_ptr<QueueDirBackend>(new QueueDirBackend(dir));
}

absl::StatusOr<SubmitOutcome> QueueDirBackend::Submit(
    const v1::QueueEntry& entry, const std::string& content_path) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (auto st = google::protobuf::util::MessageToJsonString(entry, &json, opts);
      !st.ok()) {
    return absl::InternalError(std::string(st.message()));
  }
  const std::string tmp = absl::StrCat(dir_, "/tmp/", entry.queue_id());
  const std::string dst = absl::StrCat(dir_, "/new/", entry.queue_id());
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) return QueueErrno("open " + tmp);
  int in = ::open(content_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    ::close(out);
    return QueueErrno("open " + content_path);
  }
  json += "\n";
  absl::Status st = WriteAll(out, json);
  char buf[65536];
  while (st.ok()) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) st = QueueErrno("read " + content_path);
    if (n <= 0) break;
    st = WriteAll(out, absl::string_view(buf, static_cast<size_t>(n)));
  }
  if (st.ok() && ::fsync(out) != 0) st = QueueErrno("fsync " + tmp);
  ::close(in);
  ::close(out);
  if (st.ok() && ::rename(tmp.c_str(), dst.c_str()) != 0) {
    st = QueueErrno("rename " + tmp);
  }
  if (st.ok()) st = SyncDirectory(dir_ + "/new");
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SubmitOutcome{};
}

}  // namespace sinkline::broker
