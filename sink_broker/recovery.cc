#include "sink_broker/recovery.h"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include "sink_broker/commit.h"

namespace sinkline::broker {

namespace asio = boost::asio;

RecoveryCounts RecoverSpool(const Spool& spool, MessageTable& messages,
                            const ChainEnv& chain,
                            std::shared_ptr<const Config> config,
                            asio::thread_pool& pool, Submitter& submitter) {
  RecoveryCounts counts;
  counts.partial_files_removed = spool.RemovePartialCommits();
  for (const auto& failed : spool.ListFailed()) {
    const auto& e = failed.entry;
    messages.Track(e.queue_id(), v1::MESSAGE_STATE_FAILED, e.envelope(),
                   e.size(), "found failed in the spool at start");
    messages.SetState(e.queue_id(), v1::MESSAGE_STATE_FAILED,
                      "failed: " + failed.reason, failed.reason);
    ++counts.failed;
  }
  for (auto& entry : spool.ListCommitted()) {
    auto committed = std::make_shared<v1::QueueEntry>(std::move(entry));
    const std::string& id = committed->queue_id();
    if (auto hold = spool.ReadHold(id)) {
      // Held or quarantined for an operator: it stays so.
      const std::string name = MessageStateName(hold->state);
      messages.Track(id, hold->state, committed->envelope(), committed->size(),
                     "found in the spool at start");
      messages.SetState(id, hold->state, name + ": " + hold->reason,
                        hold->reason);
      spdlog::warn("recovered {} queue_id={}: {}", name, id, hold->reason);
      ++counts.held;
      continue;
    }
    messages.Track(id, v1::MESSAGE_STATE_LEASED, committed->envelope(),
                   committed->size(), "recovered from the spool at start");
    auto holder = std::make_shared<std::weak_ptr<MessageRecord>>();
    auto record = std::make_shared<MessageRecord>(spool.ContentPath(id),
                                                  CommittedEdits(holder));
    *holder = record;
    record->set_queue_id(id);
    record->set_envelope(committed->envelope());
    v1::Event event;
    event.set_type(v1::EVENT_TYPE_EOD);
    event.set_queue_id(id);
    event.set_transaction_id(committed->transaction_id());
    *event.mutable_session() = committed->session();
    *event.mutable_envelope() = committed->envelope();
    event.set_message_size(committed->size());
    const std::set<std::string> finished = spool.Finished(id);
    auto run = std::make_shared<ChainRun>(chain, asio::make_strand(pool),
                                          config, std::move(event));
    run->message = record;
    run->RecoverAfterCommit(finished);
    spdlog::info(
        "recovered committed queue_id={}; running again the sinks after "
        "COMMIT that had not finished ({} had)",
        id, finished.size());
    ++counts.resumed;
    Submitter* s = &submitter;
    asio::post(pool, [run, committed, record, s] {
      run->Run(nullptr, nullptr, [committed, record, s](ChainRun& r) {
        s->ChainOver(committed, record, r.quarantine_reason());
      });
    });
  }
  return counts;
}

}  // namespace sinkline::broker
