// Per-sample training terms of a float64 batch against the scalar reference of reference.hpp.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "diffusion/gaussian_diffusion.hpp"
#include "reference.hpp"

namespace difftrain::diffusion::reference {

inline void expect_terms_match_reference(const TrainingTerms& terms, const Tables& ref,
                                         ModelMeanType mean, ModelVarType var, LossType loss,
                                         const at::Tensor& x_start, const at::Tensor& noise,
                                         const at::Tensor& t, const at::Tensor& model_output) {
  const at::Tensor x0 = x_start.contiguous(), eps = noise.contiguous();
  const at::Tensor out = model_output.contiguous();
  const int64_t D = x0[0].numel(), out_d = out[0].numel();
  const auto close = [](double got, double exp) {
    EXPECT_NEAR(got, exp, 1e-12 + 1e-9 * std::abs(exp));
  };
  for (int64_t n = 0; n < t.size(0); ++n) {
    const double* o = out.data_ptr<double>() + n * out_d;
    const long tn = t[n].item<long>();
    const Terms want =
        training_terms(ref, mean, var, loss, x0.data_ptr<double>() + n * D,
                       eps.data_ptr<double>() + n * D, o, is_learned(var) ? o + D : nullptr, tn, D);
    SCOPED_TRACE("sample " + std::to_string(n) + ", t = " + std::to_string(tn));
    close(terms.mse[n].item<double>(), want.mse);
    close(terms.vb[n].item<double>(), want.vb);
    close(terms.loss[n].item<double>(), want.loss);
    close(terms.vb_bits[n].item<double>(), want.vb_bits);
  }
}

}  // namespace difftrain::diffusion::reference
