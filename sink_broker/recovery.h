// Crash recovery: what a previous run left in the spool. Partial commits
// go (nobody heard 250 for them); failed messages are listed for
// operators; held and quarantined ones stay so; every other committed
// message runs again only the bindings after COMMIT that had not finished
// (sinks are told it is a redelivery), then goes to the submitter.
#pragma once

#include <boost/asio/thread_pool.hpp>
#include <memory>

#include "sink_broker/chain.h"
#include "sink_broker/config.h"
#include "sink_broker/messages.h"
#include "sink_broker/spool.h"
#include "sink_broker/submission.h"

namespace sinkline::broker {

struct RecoveryCounts {
  int partial_files_removed = 0;
  int failed = 0;
  int held = 0;  // held or quarantined
  int resumed = 0;
};

RecoveryCounts RecoverSpool(const Spool& spool, MessageTable& messages,
                            const ChainEnv& chain,
                            std::shared_ptr<const Config> config,
                            boost::asio::thread_pool& pool,
                            Submitter& submitter);

}  // namespace sinkline::broker
