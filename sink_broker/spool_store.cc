#include "sink_broker/spool_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/statistics.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "sinkline/common/failpoint.h"
#include "sinkline/common/metrics.h"

namespace sinkline::broker {

namespace {

absl::Status FromRocks(const rocksdb::Status& st, absl::string_view what) {
  if (st.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", st.ToString());
  if (st.IsNoSpace() || absl::StrContains(st.ToString(), "No space left")) {
    return absl::ResourceExhaustedError(message);
  }
  if (st.IsNotFound()) return absl::NotFoundError(message);
  return absl::UnavailableError(message);
}

Counter& Writes(bool sync) {
  return MetricsRegistry::Default().GetCounter(
      "sinkline_broker_store_writes_total",
      "Write batches to the spool's store, durable (sync=true: WAL fsynced "
      "before the write returns) or not.",
      {{"sync", sync ? "true" : "false"}});
}

// One open database per directory in the process.
absl::Mutex registry_mu(absl::kConstInit);
std::map<std::string, std::weak_ptr<SpoolStore>>& Registry() {
  static auto* r = new std::map<std::string, std::weak_ptr<SpoolStore>>;
  return *r;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SpoolStore>> SpoolStore::Open(
    const std::string& dir, const StoreOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  const std::string key = std::filesystem::weakly_canonical(dir, ec).string();
  absl::MutexLock lock(&registry_mu);
  if (auto open = Registry()[key].lock()) return open;
  rocksdb::Options o;
  o.create_if_missing = true;
  o.write_buffer_size = options.write_buffer_bytes;
  o.max_write_buffer_number = 2;
  o.max_total_wal_size = options.max_wal_bytes;
  o.max_background_jobs = 2;
  o.max_open_files = 256;
  o.keep_log_file_num = 2;
  o.max_log_file_size = 1 << 20;
  o.info_log_level = rocksdb::WARN_LEVEL;
  o.compression = rocksdb::kNoCompression;
  o.statistics = rocksdb::CreateDBStatistics();
  o.statistics->set_stats_level(rocksdb::StatsLevel::kExceptTimers);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::DB* db = nullptr;
  if (auto st = FromRocks(rocksdb::DB::Open(o, dir, &db),
                          absl::StrCat("cannot open the spool store ", dir));
      !st.ok()) {
    return st;
  }
  std::shared_ptr<SpoolStore> store(new SpoolStore(dir, db, o.statistics));
  Registry()[key] = store;
  return store;
}

SpoolStore::SpoolStore(std::string dir, rocksdb::DB* db,
                       std::shared_ptr<rocksdb::Statistics> stats)
    : dir_(std::move(dir)), db_(db), stats_(std::move(stats)) {}

SpoolStore::~SpoolStore() {
  if (db_) (void)db_->Close();
}

void SpoolStore::CountSyncs() {
  static Counter& syncs = MetricsRegistry::Default().GetCounter(
      "sinkline_broker_store_syncs_total",
      "WAL fsyncs of the spool's store; concurrent durable writes share "
      "one (group commit).");
  const uint64_t now = stats_->getTickerCount(rocksdb::WAL_FILE_SYNCED);
  uint64_t seen = syncs_seen_.load();
  while (now > seen && !syncs_seen_.compare_exchange_weak(seen, now)) {
  }
  if (now > seen) syncs.Inc(static_cast<double>(now - seen));
}

absl::Status SpoolStore::Write(rocksdb::WriteBatch& batch, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  SINKLINE_FAILPOINT("store.before_write");
  rocksdb::Status st = db_->Write(wo, &batch);
  if (!st.ok()) {
    // A failed log write (a full disk) stops later writes until the
    // database resumes; try once, so that freed space lets mail in again.
    spdlog::error("spool store write failed: {}", st.ToString());
    if (db_->Resume().ok()) st = db_->Write(wo, &batch);
  }
  if (st.ok()) SINKLINE_FAILPOINT("store.after_write");
  Writes(sync).Inc();
  if (sync) CountSyncs();
  return FromRocks(st, "spool store write");
}

absl::StatusOr<std::string> SpoolStore::Get(absl::string_view key) const {
  std::string value;
  auto st = db_->Get(rocksdb::ReadOptions(),
                     rocksdb::Slice(key.data(), key.size()), &value);
  if (st.IsNotFound()) return absl::NotFoundError(key);
  if (auto s = FromRocks(st, "spool store read"); !s.ok()) return s;
  return value;
}

bool SpoolStore::Has(absl::string_view key) const { return Get(key).ok(); }

void SpoolStore::Scan(
    absl::string_view prefix,
    const std::function<bool(absl::string_view key, absl::string_view value)>&
        fn) const {
  // The bound keeps a seek from walking the deletions past the prefix
  // (submitted messages leave them until compaction).
  std::string bound(prefix);
  while (!bound.empty() && static_cast<unsigned char>(bound.back()) == 0xff) {
    bound.pop_back();
  }
  rocksdb::ReadOptions ro;
  rocksdb::Slice upper;
  if (!bound.empty()) {
    bound.back() = static_cast<char>(bound.back() + 1);
    upper = rocksdb::Slice(bound);
    ro.iterate_upper_bound = &upper;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(rocksdb::Slice(prefix.data(), prefix.size())); it->Valid();
       it->Next()) {
    const absl::string_view k(it->key().data(), it->key().size());
    if (!absl::StartsWith(k, prefix)) break;
    if (!fn(k, absl::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
}

absl::Status SpoolStore::Dump(
    const std::string& dir,
    const std::function<void(absl::string_view key, absl::string_view value)>&
        fn) {
  rocksdb::Options o;
  o.info_log_level = rocksdb::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  if (auto st = FromRocks(rocksdb::DB::OpenForReadOnly(o, dir, &raw),
                          absl::StrCat("cannot open the spool store ", dir));
      !st.ok()) {
    return st;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    fn(absl::string_view(it->key().data(), it->key().size()),
       absl::string_view(it->value().data(), it->value().size()));
  }
  return FromRocks(it->status(), "spool store read");
}

uint64_t SpoolStore::DiskBytes() const {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    std::error_code size_ec;
    const uint64_t size = e.file_size(size_ec);
    if (!size_ec) total += size;
  }
  return total;
}

uint64_t SpoolStore::MemtableBytes() const {
  uint64_t bytes = 0;
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &bytes);
  return bytes;
}

}  // namespace sinkline::broker
