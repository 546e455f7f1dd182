// The model tests run LibTorch single-threaded: their tiny models gain nothing from intra-op
// threads, and OpenMP's spin-waiting threads slow them down tens of times when ctest runs tests
// in parallel or other processes share the cores.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

namespace {

class SingleThreadEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { at::set_num_threads(1); }
};

[[maybe_unused]] const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new SingleThreadEnvironment);

}  // namespace
