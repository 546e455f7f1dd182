// A channels-last network keeps its activations channels-last (docs/model.md, "Channels-last and
// autocast"). An op that takes a channels-first and a channels-last activation (a residual sum, a
// convolution of a channels-first input) is several times slower than the same op on one layout
// on the CPU and reads one of them uncoalesced on a GPU, and a convolution copies its input first;
// the layout, once lost at one layer, is lost for the layers after it. A 1-channel model's first
// convolution and the attention block's residual used to lose it. Counted in the training step
// of the CPU, where the same ops run as on a GPU.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "trainer_fixture.hpp"

namespace {

using TrainerRun = difftrain::testing::TrainerFixture;

std::map<std::string, int> mixed_ops;  // op name -> calls that mixed layouts
thread_local int aten_depth = 0;       // ATen ops under way on this thread

// A 4-d tensor's layout, where it is not ambiguous (a dimension of size 1 makes it both).
std::optional<at::MemoryFormat> layout_of(const c10::IValue& v) {
  if (!v.isTensor()) return std::nullopt;
  const at::Tensor& t = v.toTensor();
  if (!t.defined() || t.dim() != 4 || t.size(1) == 1 || t.size(2) * t.size(3) == 1)
    return std::nullopt;
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return std::nullopt;
}

// Counts the ops called by difftrain's code or by an autograd node, not those inside another ATen
// op (a CPU kernel's own conversions), and not the conversions themselves. One op is allowed: the
// output convolution's backward, whose gradient (kOutChannels channels) comes channels-first from
// the loss, computed in the data's layout; it makes that small gradient channels-last once.
constexpr int64_t kOutChannels = 2;  // the tiny config's learned variance on 1 channel
std::unique_ptr<at::ObserverContext> enter_op(const at::RecordFunction& fn) {
  const bool aten = std::string_view(fn.name()).rfind("aten::", 0) == 0;
  if (aten && aten_depth++ > 0) return nullptr;
  static const std::set<std::string_view> conversions{"aten::copy_", "aten::_to_copy", "aten::to",
                                                      "aten::contiguous", "aten::clone"};
  if (!aten || conversions.count(fn.name()) != 0) return nullptr;
  const auto inputs = fn.inputs();
  if (std::string_view(fn.name()) == "aten::convolution_backward" && !inputs.empty() &&
      inputs[0].isTensor() && inputs[0].toTensor().size(1) == kOutChannels)
    return nullptr;
  bool first = false, last = false;
  for (const c10::IValue& v : inputs) {
    const auto layout = layout_of(v);
    first |= layout == at::MemoryFormat::Contiguous;
    last |= layout == at::MemoryFormat::ChannelsLast;
  }
  if (first && last) ++mixed_ops[fn.name()];
  return nullptr;
}
void leave_op(const at::RecordFunction& fn, at::ObserverContext*) {
  if (std::string_view(fn.name()).rfind("aten::", 0) == 0) --aten_depth;
}

// The ops of `steps` steps of a channels-last run that mixed layouts, by name.
std::map<std::string, int> mixed_ops_of(TrainerRun& f, const std::string& name, int steps,
                                        const std::vector<std::string>& overrides) {
  const auto c = f.config(name + "_" + std::to_string(steps),
                          difftrain::testing::steps_between_log_lines(overrides, steps));
  mixed_ops.clear();
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(enter_op, leave_op)
          .needsInputs(true)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  f.train(c);
  at::removeCallback(handle);
  return mixed_ops;
}

// Converting the weights at the start and writing the last checkpoint (channels-first on disk)
// mix layouts once per run: the steps in between must not.
TEST_F(TrainerRun, AChannelsLastStepKeepsEveryActivationChannelsLast) {
  for (const auto& [name, overrides] :
       std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"bf16", {"model.channels_last=true", "training.precision=bf16"}},
           {"fp32", {"model.channels_last=true"}},
           {"bf16_fused_norm",
            {"model.channels_last=true", "training.precision=bf16", "model.fused_group_norm=true"}},
           {"plain_norm_new_attention_order",
            {"model.channels_last=true", "model.use_scale_shift_norm=false",
             "model.use_new_attention_order=true"}}}) {
    const auto two = mixed_ops_of(*this, name, 2, overrides);
    const auto four = mixed_ops_of(*this, name, 4, overrides);
    std::ostringstream more;
    for (const auto& [op, calls] : four) {
      const auto in_two = two.find(op);
      const int extra = calls - (in_two == two.end() ? 0 : in_two->second);
      if (extra != 0) more << " " << op << " (" << extra << ")";
    }
    EXPECT_EQ(more.str(), "") << name << ": ops that mixed layouts in the 2 more steps";
  }
}

}  // namespace
