// `h5shard convert`: the command line of convert.hpp.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <memory>

#include "commands.hpp"
#include "convert.hpp"
#include "data/error.hpp"

namespace difftrain::h5shard {
namespace {

// "a,b,c", or "@file" with one name per line.
std::vector<std::string> parse_class_names(const std::string& arg) {
  std::vector<std::string> names;
  if (arg.empty()) return names;
  if (arg[0] == '@') {
    std::ifstream in(arg.substr(1));
    if (!in) throw data::Error(arg.substr(1) + ": cannot open the class names file");
    for (std::string line; std::getline(in, line);) {
      line.erase(line.find_last_not_of(" \t\r") + 1);
      if (!line.empty()) names.push_back(line);
    }
    return names;
  }
  std::size_t start = 0;
  for (std::size_t comma; (comma = arg.find(',', start)) != std::string::npos; start = comma + 1)
    names.push_back(arg.substr(start, comma - start));
  names.push_back(arg.substr(start));
  return names;
}

}  // namespace

void add_convert_command(CLI::App& app, int& exit_code, const std::string& command_line) {
  auto o = std::make_shared<ConvertOptions>();
  auto compress = std::make_shared<std::string>("none");
  auto class_names = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  o->command = command_line;
  CLI::App* cmd = app.add_subcommand("convert", "Convert an image set to HDF5 shards");
  cmd->add_option("--format", o->format, "Input format")
      ->required()
      ->check(CLI::IsMember({"idx", "cifar", "images", "npy"}));
  cmd->add_option("--input", o->inputs,
                  "Input files or directory (idx: images [+ labels] or a directory; cifar: "
                  "batches or a directory; images: a folder; npy: .npy images [+ labels] or an "
                  ".npz)")
      ->required();
  cmd->add_option("--out", o->out, "Output directory (shards and manifest.json)")->required();
  auto* shards = cmd->add_option("--shards", o->shards, "Number of shards K");
  cmd->add_option("--samples-per-shard", o->samples_per_shard, "Samples per shard M")
      ->excludes(shards);
  cmd->add_option("--resize", o->resize, "Center-crop to a square and resample to S x S");
  cmd->add_option("--name", o->name, "Set name (default: the output directory's name)");
  cmd->add_option("--split", o->split,
                  "train or test: the input's own split files, or a part of --holdout")
      ->check(CLI::IsMember({"train", "test"}));
  cmd->add_option("--holdout", o->holdout,
                  "Hold out this fraction of the input: --split test writes it, train the rest");
  cmd->add_option("--holdout-seed", o->holdout_seed, "Seed of the held-out choice")->default_val(0);
  cmd->add_option("--compress", *compress, "Image compression")
      ->check(CLI::IsMember({"none", "gzip", "lzf"}))
      ->default_val("none");
  cmd->add_option("--channels", o->channels, "images: 1 (grayscale) or 3 (RGB)")
      ->check(CLI::IsMember({1, 3}))
      ->default_val(3);
  cmd->add_flag("--no-labels", o->no_labels, "Write no labels");
  cmd->add_option("--class-names", *class_names, "Class names: a,b,c or @file (one per line)");
  cmd->add_option("--cifar-labels", o->cifar_labels, "CIFAR-100 labels: fine or coarse")
      ->check(CLI::IsMember({"fine", "coarse"}))
      ->default_val("fine");
  cmd->add_option("--threads", o->threads, "Decoding threads (0: one per core)")->default_val(0);
  cmd->add_flag("--quiet", *quiet, "No progress output");
  cmd->callback([o, compress, class_names, quiet, &exit_code] {
    try {
      o->compression = h5::parse_compression(*compress);
      o->class_names = parse_class_names(*class_names);
      o->progress = !*quiet;
      const data::Manifest m = convert(*o);
      spdlog::info("wrote {} samples ({}x{}x{}{}) in {} shards to {}", m.num_samples(), m.height,
                   m.width, m.channels,
                   m.labels ? ", " + std::to_string(m.num_classes) + " classes" : "",
                   m.shards.size(), m.path);
      exit_code = kOk;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      exit_code = kBadInput;
    }
  });
}

}  // namespace difftrain::h5shard
