// The stamp sink: on every event it is bound to, it continues the chain and,
// when its binding grants read-write content access, adds a header
// "<header>: <sink name>; <queue id>" at the top of the message (the
// transaction id stands in for the queue id before COMMIT).
#pragma once

#include <string>

#include "sinkline/sdk/sink.h"

namespace sinkline::sinks {

class StampSink final : public sdk::Sink {
 public:
  // `append`: add the header after the last field instead of at the top.
  StampSink(std::string name, std::string header, bool append = false)
      : name_(std::move(name)), header_(std::move(header)), append_(append) {}

  void OnEod(sdk::EventContext& ctx) override { Stamp(ctx); }
  void OnOther(sdk::EventContext& ctx) override { Stamp(ctx); }

 private:
  void Stamp(sdk::EventContext& ctx);

  const std::string name_;
  const std::string header_;
  const bool append_;
};

}  // namespace sinkline::sinks
