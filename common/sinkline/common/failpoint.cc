#include "sinkline/common/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace sinkline {

// The table. tests/integration/test_failpoints.py reads the names from
// here and drives a message through each point.
const FailpointInfo kFailpoints[] = {
    // COMMIT (incoming.cc): the client has no 250 yet at any of these.
    {"commit.content.before_fsync", "content written, not yet fsynced"},
    {"commit.content.after_fsync", "content fsynced, still in incoming/"},
    {"commit.content.after_rename",
     "content moved to committed/<id>.msg, no envelope record yet"},
    {"commit.envelope.before_write",
     "content's name durable, envelope record not yet in the store"},
    // Any write batch of the spool's store (spool_store.cc): before the
    // write (and its WAL fsync), after it returned.
    {"store.before_write", "a store write batch about to be written"},
    {"store.after_write", "a store write batch written (synced if durable)"},
    // Any durable file write (durable_file.cc): temporary file, rename.
    {"durable.before_rename", "temporary file written and fsynced"},
    {"durable.after_rename", "renamed over its target, directory not synced"},
    // Any directory sync (durable_file.cc SyncDirectory).
    {"dirsync.before", "a directory fsync about to run"},
    {"dirsync.after", "a directory fsync just returned"},
    {"commit.after_durable",
     "envelope record durable: committed, 250 not yet sent"},
    // A lease's content edits published after COMMIT (commit.cc).
    {"lease.publish.before_rename", "new version fsynced as <id>.msg.edit"},
    {"lease.publish.after_rename", "new version renamed over <id>.msg"},
    {"lease.publish.after_sync", "new version durable, lease not yet ended"},
    // A lease's envelope edits made durable at its end (spool.cc, a store
    // write).
    {"lease.envelope.before_write", "lease ended, edited envelope not written"},
    {"lease.envelope.after_write", "edited envelope durable, binding not done"},
    // A post-COMMIT binding recorded as finished (spool.cc MarkFinished).
    {"done.before_write", "binding finished, not yet recorded (d/<id>/..)"},
    {"done.after_write", "binding recorded as finished in the store"},
    // A quarantine or hold recorded (spool.cc WriteHold).
    {"hold.before_write", "refusal decided, hold record (h/<id>) not written"},
    {"hold.after_write", "hold record durable in the store"},
    // The chain is over: the edited envelope rewritten (submission.cc).
    {"envelope.before_rewrite", "chain over, envelope record not rewritten"},
    {"envelope.after_rewrite", "envelope record rewritten"},
    // Submission (submission.cc).
    {"submit.before_backend", "about to hand the message to the backend"},
    {"submit.after_backend", "the backend took it; spool still holds it"},
    {"submit.before_mark", "about to remove the message from the spool"},
    {"submit.after_mark", "records and content removed: submitted"},
};
const size_t kFailpointCount = sizeof(kFailpoints) / sizeof(kFailpoints[0]);

bool FailpointsCompiledIn() {
#ifdef SINKLINE_FAILPOINTS
  return true;
#else
  return false;
#endif
}

#ifdef SINKLINE_FAILPOINTS
namespace {

struct Armed {
  std::string name;
  long at = 1;
  std::atomic<long> hits{0};
};

Armed* ReadArmed() {
  const char* env = std::getenv("SINKLINE_FAILPOINT");
  if (env == nullptr || *env == '\0') return nullptr;
  auto* armed = new Armed;
  std::string spec(env);
  if (const auto colon = spec.find(':'); colon != std::string::npos) {
    armed->at = std::max(1L, std::atol(spec.c_str() + colon + 1));
    spec.resize(colon);
  }
  armed->name = spec;
  return armed;
}

void Say(const char* a, const char* b) {
  // Async-signal-safe and unbuffered: the process dies right after.
  (void)!::write(2, a, std::strlen(a));
  (void)!::write(2, b, std::strlen(b));
  (void)!::write(2, "\n", 1);
}

}  // namespace

void FailpointHit(const char* name) {
  bool known = false;
  for (size_t i = 0; i < kFailpointCount; ++i) {
    if (std::strcmp(kFailpoints[i].name, name) == 0) known = true;
  }
  if (!known) {
    Say("failpoint not in the table: ", name);
    std::abort();
  }
  static Armed* armed = ReadArmed();
  if (armed == nullptr || armed->name != name) return;
  if (armed->hits.fetch_add(1) + 1 != armed->at) return;
  Say("failpoint fired, SIGKILL: ", name);
  ::raise(SIGKILL);
}
#endif

}  // namespace sinkline
