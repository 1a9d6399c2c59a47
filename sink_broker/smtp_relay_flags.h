// The relay backend's command-line flags (--relay-*), read into
// SmtpRelayOptions.
#pragma once

#include <string>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "sink_broker/smtp_relay.h"

ABSL_DECLARE_FLAG(std::string, relay_host);

namespace sinkline::broker {

// The options the --relay-* flags give; INVALID_ARGUMENT for a value that
// does not hold (--relay-tls, --relay-host syntax, CA file).
absl::StatusOr<SmtpRelayOptions> RelayOptionsFromFlags();

}  // namespace sinkline::broker
