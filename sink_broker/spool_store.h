// The spool's records in one RocksDB database (<spool>/state/): the
// envelope record of every committed message, the post-COMMIT bindings that
// finished with it, its hold or quarantine, its per-recipient delivery
// state and, for a message refused for good, the reason. Content stays one
// file per message (spool.h).
//
// Every state change is one WriteBatch; a durable one is written with
// sync=true, so that it is in the write-ahead log, fsynced, when Write
// returns. Writers that arrive while a WAL fsync runs are written together
// by the next one (RocksDB's write group): concurrent COMMITs share one
// fsync. Counted in sinkline_broker_store_writes_total{sync} and
// sinkline_broker_store_syncs_total (the WAL fsyncs RocksDB ran).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rocksdb {
class DB;
class Statistics;
class WriteBatch;
}  // namespace rocksdb

namespace sinkline::broker {

// What an operator may size (broker flags --store-*).
struct StoreOptions {
  // One memtable's size; two at most are kept (the broker's memory target
  // is about 100 MB).
  uint64_t write_buffer_bytes = 4ULL << 20;
  // The block cache for reads of flushed records.
  uint64_t block_cache_bytes = 8ULL << 20;
  // The write-ahead log is cut (memtables flushed) past this size.
  uint64_t max_wal_bytes = 64ULL << 20;
};

class SpoolStore {
 public:
  // The database under `dir` (created when missing). One instance per
  // directory in a process: every Spool on that directory shares it, and a
  // second process gets UNAVAILABLE (RocksDB's lock file).
  static absl::StatusOr<std::shared_ptr<SpoolStore>> Open(
      const std::string& dir, const StoreOptions& options);
  ~SpoolStore();
  SpoolStore(const SpoolStore&) = delete;
  SpoolStore& operator=(const SpoolStore&) = delete;

  // One atomic write; with `sync` durable (WAL fsynced) on return. Without
  // it the batch is in the log (it survives the process, not the machine,
  // until the next synced write). RESOURCE_EXHAUSTED when the disk is full.
  // Failpoints store.before_write and store.after_write.
  absl::Status Write(rocksdb::WriteBatch& batch, bool sync);

  // NOT_FOUND when absent.
  absl::StatusOr<std::string> Get(absl::string_view key) const;
  bool Has(absl::string_view key) const;
  // Every key starting with `prefix`, in order: fn(key, value); false stops.
  void Scan(absl::string_view prefix,
            const std::function<bool(absl::string_view key,
                                     absl::string_view value)>& fn) const;

  // Every record of the store under `dir`, opened read-only (also while a
  // broker has it open: what its log holds at this moment).
  static absl::Status Dump(
      const std::string& dir,
      const std::function<void(absl::string_view key, absl::string_view value)>&
          fn);

  const std::string& dir() const { return dir_; }
  // Bytes of the database's files (tables, log), and its memtables.
  uint64_t DiskBytes() const;
  uint64_t MemtableBytes() const;

 private:
  SpoolStore(std::string dir, rocksdb::DB* db,
             std::shared_ptr<rocksdb::Statistics> stats);
  void CountSyncs();

  const std::string dir_;
  std::unique_ptr<rocksdb::DB> db_;
  std::shared_ptr<rocksdb::Statistics> stats_;
  std::atomic<uint64_t> syncs_seen_{0};
};

}  // namespace sinkline::broker
