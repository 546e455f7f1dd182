// A tiny data set and checkpoint for the sample / eval command tests: shards written with the
// data room's writer, a UNet built from a config as the trainer builds it, its weights perturbed
// (the output layer starts at zero), saved with save_checkpoint.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "data/manifest.hpp"
#include "data/shard_writer.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/loss_scaler.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"

namespace difftrain::testing {

// num images of h x w x c with smooth random content, labels i % classes (classes 0: none). With
// block > 1, each block x block square is one colour: the set at (h, w, block) is the one at
// (h / block, w / block, 1) of the same seed upsampled, whose area-downsampling is that set again.
inline std::string write_tiny_set(const std::string& dir, int64_t num, int64_t h, int64_t w,
                                  int64_t c, int64_t classes, uint64_t seed = 1,
                                  int64_t block = 1) {
  std::filesystem::create_directories(dir);
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor images =
      at::randint(40, 216, {num, h / block, w / block, c}, g, at::TensorOptions().dtype(at::kByte))
          .repeat_interleave(block, 1)
          .repeat_interleave(block, 2)
          .contiguous();
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < num; ++i)
    labels.push_back(classes > 0 ? i % classes : 0);
  data::ShardSpec spec;
  spec.num_samples = num;
  spec.height = h;
  spec.width = w;
  spec.channels = c;
  spec.labels = classes > 0;
  data::ShardWriter writer(dir, "shard_00000.h5", spec);
  writer.append(images.data_ptr<uint8_t>(), labels.data(), num);
  data::Manifest m;
  m.name = "tiny";
  m.height = h;
  m.width = w;
  m.channels = c;
  m.labels = classes > 0;
  m.num_classes = classes;
  m.shards.push_back(writer.finish());
  const std::string path = dir + "/manifest.json";
  data::write_manifest(m, path);
  return path;
}

// The config of a tiny run on `manifest` (6x6 images padded to 8 unless pad_to is 0).
inline std::string tiny_config_yaml(const std::string& manifest, int64_t pad_to = 8,
                                    bool class_conditional = false, int64_t model_channels = 32) {
  return "seed: 0\ndevice: cpu\n"
         "data:\n  train: " +
         manifest + "\n  pad_to: " + std::to_string(pad_to) +
         "\n  class_conditional: " + (class_conditional ? "true" : "false") +
         "\nmodel:\n  model_channels: " + std::to_string(model_channels) +
         "\n  channel_mult: [1, 2]\n  num_res_blocks: 1\n  attention_resolutions: [4]\n"
         "  num_heads: 1\n"
         "diffusion:\n  schedule: linear\n  steps: 40\n  model_var_type: learned_range\n"
         "training:\n  batch_size: 4\n  ema_rates: [0.9]\n"
         // Every section present: parse_config currently rejects a config without one.
         "logging:\n  log_every: 50\n";
}

// Saves a checkpoint of a model built from weights_yaml with the stored config stored_yaml
// (normally the same; another one makes a checkpoint that does not fit its config).
inline void write_tiny_checkpoint(const std::string& path, const std::string& weights_yaml,
                                  const std::string& stored_yaml, int64_t step = 100) {
  const train::Config c = train::parse_config(weights_yaml);
  const data::Manifest m = data::read_manifest(c.data.train);
  model::UNet net(train::unet_config(c, train::data_shape(c, &m)));
  {
    torch::NoGradGuard no_grad;
    auto g = at::make_generator<at::CPUGeneratorImpl>(5);
    for (auto& p : net->parameters())
      p.add_(at::randn(p.sizes(), g, at::TensorOptions().dtype(at::kFloat)) * 0.05);
  }
  train::TrainState state;
  state.net = net;
  state.optimizer = train::make_adamw(net->parameters(), 1e-4, 0.0);
  state.emas = train::make_emas(c.training.ema_rates, net->parameters());
  {
    // The EMA weights differ from the raw ones, so the choice shows in the outputs.
    torch::NoGradGuard no_grad;
    for (auto& e : state.emas)
      for (auto& p : e.params)
        p.mul_(0.9);
  }
  state.sampler = diffusion::make_timestep_sampler(diffusion::TimestepSamplerKind::uniform,
                                                   c.diffusion.steps, at::kCPU);
  state.scaler = train::make_loss_scaler(false, 65536, 2000, 1, at::kCPU);
  state.step = step;
  train::save_checkpoint(path, state, stored_yaml);
}

// A noisy classifier's checkpoint (difftrain train-classifier) for images of `manifest` (labelled),
// padded to 8, on a `schedule` diffusion of 40 steps, its weights perturbed from their start.
inline void write_tiny_classifier(const std::string& path, const std::string& manifest,
                                  const std::string& schedule = "linear") {
  const train::Config c = train::parse_config(
      "seed: 0\ndevice: cpu\n"
      "data: {train: " +
      manifest +
      ", pad_to: 8, class_conditional: true}\n"
      "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
      " attention_resolutions: [4], num_head_channels: 32, pool: attention}\n"
      "diffusion: {schedule: " +
      schedule +
      ", steps: 40}\n"
      "training: {batch_size: 4}\nlogging: {log_every: 50}\n");
  const data::Manifest m = data::read_manifest(c.data.train);
  const train::DataShape shape = train::data_shape(c, &m);
  auto comm = parallel::make_local_communicator();
  train::ClassifierState state = train::make_classifier_state(c, shape, at::kCPU, *comm);
  {
    torch::NoGradGuard no_grad;
    auto g = at::make_generator<at::CPUGeneratorImpl>(6);
    for (auto& p : state.net->parameters())
      p.add_(at::randn(p.sizes(), g, at::TensorOptions().dtype(at::kFloat)) * 0.1);
  }
  state.step = 50;
  train::save_classifier_checkpoint(path, state, train::to_yaml(train::resolved_config(c, shape)));
}

}  // namespace difftrain::testing
