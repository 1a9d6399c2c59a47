// sinkline-sink-stamp: a sink service that stamps every message it sees.
#include <string>

#include "absl/flags/flag.h"
#include "sinks/stamp/stamp_sink.h"

ABSL_FLAG(std::string, name, "stamp", "sink name written into the header");
ABSL_FLAG(std::string, header, "X-Sinkline-Stamp", "header field to add");
ABSL_FLAG(bool, append, false,
          "add the header after the last field instead of at the top");

int main(int argc, char** argv) {
  sinkline::sdk::Init(argc, argv, "stamp");
  sinkline::sinks::StampSink sink(absl::GetFlag(FLAGS_name),
                                  absl::GetFlag(FLAGS_header),
                                  absl::GetFlag(FLAGS_append));
  return sinkline::sdk::Serve(sink);
}
