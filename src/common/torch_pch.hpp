// The LibTorch headers every torch translation unit uses, precompiled once.
#pragma once
#include <torch/torch.h>
