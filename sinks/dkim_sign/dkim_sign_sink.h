// The dkim-sign sink: bound to EOD before COMMIT with read-write access, it
// reads the whole message (inline or through the Content service), signs it
// with every key of the From: domain (see dkim_signer.h) and adds one
// DKIM-Signature header per key at the top. A message with no configured
// domain passes unsigned; a signing error continues unsigned and is logged
// and counted, or refuses the message with 451 4.3.0 under --tempfail-on-error.
#pragma once

#include <memory>

#include "dkim_signer.h"
#include "sinkline/sdk/sink.h"

namespace sinkline::sinks {

class DkimSignSink final : public sdk::Sink {
 public:
  DkimSignSink(std::unique_ptr<DkimSigner> signer, bool tempfail_on_error)
      : signer_(std::move(signer)), tempfail_on_error_(tempfail_on_error) {}

  void OnEod(sdk::EventContext& ctx) override;

 private:
  const std::unique_ptr<DkimSigner> signer_;
  const bool tempfail_on_error_;
};

}  // namespace sinkline::sinks
