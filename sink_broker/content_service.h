// The Content service: sinks read and write a message with a lease token.
// A thin gRPC adapter over the LeaseTable: each call finds its lease (and
// checks the claim a sink makes in its metadata), then reads the lease's
// snapshot or stages an edit that the lease publishes when it ends.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "sink_broker/lease.h"
#include "sink_broker/peer_limits.h"
#include "sinkline/v1/content.grpc.pb.h"

namespace sinkline::broker {

// `limits`: the per-peer stream and in-flight byte limits and the largest
// ReplaceBody body.
std::unique_ptr<grpc::Service> MakeContentService(
    LeaseTable& leases, const PeerLimits& limits = PeerLimits());

}  // namespace sinkline::broker
