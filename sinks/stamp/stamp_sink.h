// The stamp sink: on every event it is bound to, it continues the chain and,
// when its binding grants read-write content access, adds a header
// "<header>: <sink name>; <queue id>" at the top of the message.
#pragma once

#include <string>

#include "sinkline/v1/sink.grpc.pb.h"

namespace sinkline::sinks {

// The verdict for one request; pure so that it can be tested alone.
sinkline::v1::Verdict StampVerdict(const std::string& sink_name,
                                   const std::string& header_name,
                                   const sinkline::v1::SinkRequest& request);

class StampSink final : public sinkline::v1::Sink::CallbackService {
 public:
  StampSink(std::string sink_name, std::string header_name)
      : sink_name_(std::move(sink_name)),
        header_name_(std::move(header_name)) {}

  grpc::ServerUnaryReactor* OnEvent(grpc::CallbackServerContext* context,
                                    const sinkline::v1::SinkRequest* request,
                                    sinkline::v1::Verdict* verdict) override;

 private:
  const std::string sink_name_;
  const std::string header_name_;
};

}  // namespace sinkline::sinks
