// Mixed precision for a scope (the network's forward): autocast on `device` to `dtype`, restored
// on exit, as torch.autocast.
#pragma once

#include <ATen/autocast_mode.h>

namespace difftrain::train {

class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, bool enabled, at::ScalarType dtype)
      : device_(device), previous_(at::autocast::is_autocast_enabled(device)) {
    at::autocast::set_autocast_enabled(device_, enabled);
    if (enabled) at::autocast::set_autocast_dtype(device_, dtype);
  }
  ~AutocastScope() {
    at::autocast::set_autocast_enabled(device_, previous_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool previous_;
};

}  // namespace difftrain::train
