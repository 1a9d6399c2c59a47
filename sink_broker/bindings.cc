#include "sink_broker/bindings.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "sinkline/common/durable_file.h"

namespace sinkline::broker {

BindingStore::BindingStore(Config file, std::string config_path,
                           std::string admin_state_path, Publish publish)
    : config_path_(std::move(config_path)),
      admin_state_path_(std::move(admin_state_path)),
      publish_(std::move(publish)),
      config_(std::make_shared<const Config>(file)) {
  absl::MutexLock lock(&admin_mu_);
  file_config_ = std::move(file);
}

std::shared_ptr<const Config> BindingStore::config() const {
  absl::MutexLock lock(&mu_);
  return config_;
}

void BindingStore::Install(Config config) {
  auto next = std::make_shared<const Config>(std::move(config));
  {
    absl::MutexLock lock(&mu_);
    config_ = next;
  }
  if (publish_) publish_(next);
}

absl::Status BindingStore::LoadAdminState() {
  absl::MutexLock lock(&admin_mu_);
  if (admin_state_path_.empty()) return absl::OkStatus();
  std::error_code ec;
  if (!std::filesystem::exists(admin_state_path_, ec)) return absl::OkStatus();
  auto parsed = ParseConfig(ReadWholeFile(admin_state_path_), admin_state_path_,
                            &file_config_.sinks);
  if (!parsed.ok()) return parsed.status();
  for (auto& b : parsed->bindings) b.spec.set_origin("admin");
  auto merged = MergeBindings(file_config_, parsed->bindings);
  if (!merged.ok()) return merged.status();
  admin_bindings_ = std::move(parsed->bindings);
  Install(std::move(*merged));
  return absl::OkStatus();
}

absl::Status BindingStore::ReloadFile() {
  auto file = LoadConfig(config_path_);
  if (!file.ok()) return file.status();
  return SetFileConfig(std::move(*file));
}

absl::Status BindingStore::SetFileConfig(Config file) {
  absl::MutexLock lock(&admin_mu_);
  auto merged = MergeBindings(file, admin_bindings_);
  if (!merged.ok()) return merged.status();
  file_config_ = std::move(file);
  Install(std::move(*merged));
  return absl::OkStatus();
}

absl::StatusOr<BindingConfig> BindingStore::CheckAdminBinding(
    const v1::Binding& b) {
  if (b.name().empty()) {
    return absl::InvalidArgumentError("binding.name is required");
  }
  if (b.event() == v1::EVENT_TYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError("binding.event is required");
  }
  if (b.event() == v1::EVENT_TYPE_UNKNOWN && b.verb().empty()) {
    return absl::InvalidArgumentError(
        "binding.verb is required for a custom verb");
  }
  BindingConfig bc;
  bc.spec = b;
  if (bc.spec.deadline_ms() == 0) bc.spec.set_deadline_ms(5000);
  // One validation for both sources: the file parser.
  auto parsed =
      ParseConfig(BindingsToYaml({bc}), "admin request", &file_config_.sinks);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(std::string(parsed.status().message()));
  }
  BindingConfig out = std::move(parsed->bindings.front());
  out.spec.set_origin("admin");
  return out;
}

absl::Status BindingStore::CommitAdmin(std::vector<BindingConfig> next) {
  auto merged = MergeBindings(file_config_, next);
  if (!merged.ok()) return merged.status();
  if (!admin_state_path_.empty()) {
    if (auto st = WriteFileDurably(admin_state_path_, BindingsToYaml(next));
        !st.ok()) {
      return st;
    }
  }
  admin_bindings_ = std::move(next);
  Install(std::move(*merged));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BindingConfig>::iterator> BindingStore::FindAdmin(
    std::vector<BindingConfig>& bindings, const std::string& name) {
  auto it = std::find_if(bindings.begin(), bindings.end(),
                         [&](const auto& b) { return b.spec.name() == name; });
  if (it != bindings.end()) return it;
  for (const auto& b : file_config_.bindings) {
    if (b.spec.name() == name) {
      return absl::FailedPreconditionError(
          absl::StrCat("binding '", name, "' comes from the bindings file ",
                       config_path_, "; change it there"));
    }
  }
  return absl::NotFoundError("no binding named '" + name + "'");
}

absl::StatusOr<v1::Binding> BindingStore::Create(const v1::Binding& binding) {
  absl::MutexLock lock(&admin_mu_);
  v1::Binding wanted = binding;
  wanted.set_enabled(true);  // new bindings start enabled
  auto bc = CheckAdminBinding(wanted);
  if (!bc.ok()) return bc.status();
  auto next = admin_bindings_;
  next.push_back(*bc);
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: created binding {}", bc->spec.name());
  return bc->spec;
}

absl::StatusOr<v1::Binding> BindingStore::Update(const v1::Binding& binding) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = FindAdmin(next, binding.name());
  if (!it.ok()) return it.status();
  v1::Binding wanted = binding;
  wanted.set_enabled((*it)->spec.enabled());  // Enable/Disable change that
  auto bc = CheckAdminBinding(wanted);
  if (!bc.ok()) return bc.status();
  **it = *bc;
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: updated binding {}", bc->spec.name());
  return bc->spec;
}

absl::Status BindingStore::Delete(const std::string& name) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = FindAdmin(next, name);
  if (!it.ok()) return it.status();
  next.erase(*it);
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: deleted binding {}", name);
  return absl::OkStatus();
}

absl::StatusOr<v1::Binding> BindingStore::SetEnabled(const std::string& name,
                                                     bool enabled) {
  absl::MutexLock lock(&admin_mu_);
  auto next = admin_bindings_;
  auto it = FindAdmin(next, name);
  if (!it.ok()) return it.status();
  (*it)->spec.set_enabled(enabled);
  v1::Binding out = (*it)->spec;
  if (auto st = CommitAdmin(std::move(next)); !st.ok()) return st;
  spdlog::info("admin: {} binding {}", enabled ? "enabled" : "disabled", name);
  return out;
}

}  // namespace sinkline::broker
