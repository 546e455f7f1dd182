#include "train/faults.hpp"

#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include "train/config.hpp"
#include "train/train_state.hpp"

namespace difftrain::train {

Fault parse_fault(const std::string& text, int fault_rank, int rank) {
  if (text.empty() || (fault_rank >= 0 && fault_rank != rank)) return {};
  const auto at = text.find('@');
  const std::string kind = text.substr(0, at);
  Fault f;
  if (kind == "hang") f.kind = Fault::Kind::hang;
  if (kind == "exit") f.kind = Fault::Kind::exit;
  if (kind == "kill") f.kind = Fault::Kind::kill;
  if (kind == "term") f.kind = Fault::Kind::term;
  if (kind == "nan") f.kind = Fault::Kind::nan;
  if (kind == "diverge") f.kind = Fault::Kind::diverge;
  if (kind == "late_batch") f.kind = Fault::Kind::late_batch;
  try {
    f.step = at == std::string::npos ? -1 : std::stoll(text.substr(at + 1));
  } catch (const std::exception&) {
    f.step = -1;
  }
  if (f.kind == Fault::Kind::none || f.step < 0)
    throw ConfigError("--fault '" + text +
                      "' must be hang@STEP, exit@STEP, kill@STEP, term@STEP, nan@STEP, "
                      "diverge@STEP or late_batch@STEP");
  return f;
}

bool inject_fault(const Fault& fault, int64_t step, TrainState& state) {
  if (fault.step != step) return false;
  switch (fault.kind) {
    case Fault::Kind::none:
      return false;
    case Fault::Kind::hang:
      for (;;)
        std::this_thread::sleep_for(std::chrono::seconds(1));
    case Fault::Kind::exit:
      std::_Exit(3);
    case Fault::Kind::kill:
      raise(SIGKILL);
      return false;
    case Fault::Kind::term:
      raise(SIGTERM);
      return false;
    case Fault::Kind::nan:
      return true;
    case Fault::Kind::late_batch:
      std::this_thread::sleep_for(std::chrono::seconds(1));
      return false;
    case Fault::Kind::diverge: {
      torch::NoGradGuard no_grad;
      state.net->parameters().front().add_(1e-3);
      return false;
    }
  }
  return false;
}

}  // namespace difftrain::train
