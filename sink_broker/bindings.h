// The binding store: the bindings file and the bindings made through the
// admin service (kept in their own YAML file, persisted before they apply),
// merged into one effective configuration. Every change is published
// through a callback (the broker tells each edge stream its new binding
// map).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sink_broker/config.h"

namespace sinkline::broker {

class BindingStore {
 public:
  using Publish = std::function<void(std::shared_ptr<const Config>)>;

  // `config_path`: the bindings file; `admin_state_path`: where admin
  // bindings are kept (none when empty).
  BindingStore(Config file, std::string config_path,
               std::string admin_state_path, Publish publish);

  std::shared_ptr<const Config> config() const;

  // Loads the admin service's bindings kept from an earlier run.
  absl::Status LoadAdminState();
  // Re-reads the bindings file; a file with any error is refused whole and
  // the running configuration stays.
  absl::Status ReloadFile();
  // Installs a parsed bindings file (merged with the admin bindings).
  absl::Status SetFileConfig(Config file);

  // The admin service's binding changes.
  absl::StatusOr<v1::Binding> Create(const v1::Binding& binding);
  absl::StatusOr<v1::Binding> Update(const v1::Binding& binding);
  absl::Status Delete(const std::string& name);
  absl::StatusOr<v1::Binding> SetEnabled(const std::string& name, bool enabled);

 private:
  // Swaps in a new effective configuration and publishes it.
  void Install(Config config);
  // Validates an admin binding against the file's sinks.
  absl::StatusOr<BindingConfig> CheckAdminBinding(const v1::Binding& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // Persists `next` and, when the merge works, makes it the admin bindings.
  absl::Status CommitAdmin(std::vector<BindingConfig> next)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // The admin binding `name`; NOT_FOUND, or FAILED_PRECONDITION when the
  // file has it.
  absl::StatusOr<std::vector<BindingConfig>::iterator> FindAdmin(
      std::vector<BindingConfig>& bindings, const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);

  const std::string config_path_;
  const std::string admin_state_path_;
  const Publish publish_;
  // Serialises configuration changes (file reloads and admin calls).
  absl::Mutex admin_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  Config file_config_ ABSL_GUARDED_BY(admin_mu_);
  std::vector<BindingConfig> admin_bindings_ ABSL_GUARDED_BY(admin_mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const Config> config_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkline::broker
