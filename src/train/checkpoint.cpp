#include "train/checkpoint.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "train/classifier.hpp"
#include "train/phema.hpp"

namespace fs = std::filesystem;

namespace difftrain::train {
namespace {

constexpr char kMagic[8] = {'D', 'T', 'C', 'K', 'P', 'T', '0', '1'};

// [archive bytes][magic 8][format version u32][crc32 u32][archive size u64]
struct Trailer {
  char magic[8];
  uint32_t version;
  uint32_t crc;
  uint64_t size;
};
static_assert(sizeof(Trailer) == 24);

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path + ": cannot open checkpoint");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

uint32_t crc_of(const std::string& bytes, std::size_t n) {
  return static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), n));
}

std::string problem_of(const std::string& bytes) {
  if (bytes.size() < sizeof(Trailer)) return "too short to be a checkpoint (truncated?)";
  Trailer t;
  std::memcpy(&t, bytes.data() + bytes.size() - sizeof(Trailer), sizeof(Trailer));
  if (std::memcmp(t.magic, kMagic, sizeof kMagic) != 0)
    return "no difftrain checkpoint trailer (truncated, or not a checkpoint)";
  if (t.version != kCheckpointFormatVersion)
    return "checkpoint format version " + std::to_string(t.version) + ", this build reads " +
           std::to_string(kCheckpointFormatVersion);
  if (t.size != bytes.size() - sizeof(Trailer)) return "size does not match its trailer";
  if (t.crc != crc_of(bytes, t.size)) return "checksum mismatch (corrupt file)";
  return "";
}

// Opens a checkpoint, verifying the trailer, as a LibTorch archive.
torch::serialize::InputArchive open_archive(const std::string& path) {
  const std::string bytes = read_file(path);
  const std::string problem = problem_of(bytes);
  if (!problem.empty()) throw CheckpointError(path + ": " + problem);
  torch::serialize::InputArchive archive;
  // On the host, whatever device wrote it: a checkpoint from a GPU loads on a CPU-only machine,
  // and every tensor is then copied to where the live state is.
  archive.load_from(bytes.data(), bytes.size() - sizeof(Trailer), c10::Device(c10::kCPU));
  return archive;
}

at::Tensor read_tensor(torch::serialize::InputArchive& a, const std::string& path,
                       const std::string& key) {
  at::Tensor t;
  if (!a.try_read(key, t)) throw CheckpointError(path + ": checkpoint has no '" + key + "'");
  return t;
}

int64_t read_int(torch::serialize::InputArchive& a, const std::string& path,
                 const std::string& key) {
  c10::IValue v;
  if (!a.try_read(key, v) || !v.isInt())
    throw CheckpointError(path + ": checkpoint has no integer '" + key + "'");
  return v.toInt();
}

// Copies `src` into the live tensor `dst`, refusing another shape.
void copy_checked(const std::string& path, const std::string& name, const at::Tensor& dst,
                  const at::Tensor& src) {
  if (dst.sizes() != src.sizes())
    throw CheckpointError(path + ": '" + name + "' has shape " + c10::str(src.sizes()) +
                          " in the checkpoint but " + c10::str(dst.sizes()) +
                          " in the model (a checkpoint of another config?)");
  torch::NoGradGuard no_grad;
  dst.copy_(src);
}

std::vector<std::pair<std::string, at::Tensor>> named_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (const auto& p : model.named_parameters())
    state.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers())
    state.emplace_back(b.key(), b.value());
  return state;
}

std::string ema_key(std::size_t rate_index, std::size_t param_index) {
  return "ema/" + std::to_string(rate_index) + "/" + std::to_string(param_index);
}

// Missing tensors fail when read; this catches the others: a checkpoint of a larger model (more
// blocks, another attention layout) must not load silently into the first layers of this one.
void check_no_unexpected_tensors(torch::serialize::InputArchive& a, const std::string& path,
                                 const torch::nn::Module& model) {
  std::set<std::string> expected;
  for (const auto& [name, t] : named_state(model))
    expected.insert("model/" + name);
  const std::size_t num_params = model.parameters().size();
  std::vector<std::string> unexpected;
  for (const std::string& key : a.keys()) {
    const bool model_key = key.rfind("model/", 0) == 0 && !expected.count(key);
    const auto slash = key.rfind('/');
    const bool ema_key = key.rfind("ema/", 0) == 0 && key.substr(slash + 1) != "rate" &&
                         std::stoull(key.substr(slash + 1)) >= num_params;
    if (model_key || ema_key) unexpected.push_back(key);
  }
  if (unexpected.empty()) return;
  std::string names;
  for (std::size_t i = 0; i < std::min<std::size_t>(3, unexpected.size()); ++i)
    names += (i ? ", " : "") + unexpected[i];
  throw CheckpointError(path + ": holds " + std::to_string(unexpected.size()) +
                        " tensor(s) the model built from the config does not have (" + names +
                        (unexpected.size() > 3 ? ", ..." : "") +
                        "): a checkpoint of another architecture");
}

// The archive, its trailer appended, written to a temporary name and renamed into place. The
// archive is streamed to the file as it is serialised (no copy of it in memory), the CRC computed
// on the way.
void write_with_trailer(const std::string& path, torch::serialize::OutputArchive& a) {
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    uLong crc = crc32(0L, Z_NULL, 0);
    uint64_t size = 0;
    a.save_to([&](const void* data, std::size_t n) -> std::size_t {
      f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
      crc = crc32_z(crc, static_cast<const Bytef*>(data), n);
      size += n;
      return n;
    });
    Trailer t;
    std::memcpy(t.magic, kMagic, sizeof kMagic);
    t.version = kCheckpointFormatVersion;
    t.size = size;
    t.crc = static_cast<uint32_t>(crc);
    f.write(reinterpret_cast<const char*>(&t), sizeof t);
    f.flush();
    if (!f) {
      f.close();
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw CheckpointError(tmp + ": cannot write checkpoint (disk full?); removed it, the " +
                            "previous checkpoints are unchanged");
    }
  }
  fs::rename(tmp, path);
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainState& s, const std::string& config_yaml,
                     const std::string& imported_from) {
  torch::serialize::OutputArchive a;
  a.write("format_version", c10::IValue(static_cast<int64_t>(kCheckpointFormatVersion)));
  a.write("config_yaml", c10::IValue(config_yaml));
  a.write("step", c10::IValue(s.step));
  a.write("data_epoch", c10::IValue(s.cursor.epoch));
  a.write("data_batch", c10::IValue(s.cursor.batch));
  if (!imported_from.empty()) a.write("imported_from", c10::IValue(imported_from));
  a.write("ema_count", c10::IValue(static_cast<int64_t>(s.emas.size())));
  for (std::size_t i = 0; i < s.emas.size(); ++i)
    a.write("ema/" + std::to_string(i) + "/rate", c10::IValue(s.emas[i].rate));
  for (const auto& [key, t] : named_state_tensors(s))
    a.write(key, t.detach());
  torch::serialize::OutputArchive optimizer;
  write_step_count(s.optimizer);
  s.optimizer.state->save(optimizer);
  a.write("optimizer", optimizer);
  phema::save_state(a, s.phema);
  write_with_trailer(path, a);
}

void save_weights_checkpoint(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& model_state,
                             int64_t step, const std::string& config_yaml) {
  torch::serialize::OutputArchive a;
  a.write("format_version", c10::IValue(static_cast<int64_t>(kCheckpointFormatVersion)));
  a.write("config_yaml", c10::IValue(config_yaml));
  a.write("step", c10::IValue(step));
  for (const auto& [name, t] : model_state)
    a.write("model/" + name, t.detach());
  a.write("ema_count", c10::IValue(static_cast<int64_t>(0)));
  write_with_trailer(path, a);
}

void save_classifier_checkpoint(const std::string& path, const ClassifierState& s,
                                const std::string& config_yaml, const std::string& imported_from) {
  torch::serialize::OutputArchive a;
  a.write("format_version", c10::IValue(static_cast<int64_t>(kCheckpointFormatVersion)));
  a.write("kind", c10::IValue(std::string("classifier")));
  if (!imported_from.empty()) a.write("imported_from", c10::IValue(imported_from));
  a.write("config_yaml", c10::IValue(config_yaml));
  a.write("step", c10::IValue(s.step));
  a.write("data_epoch", c10::IValue(s.cursor.epoch));
  a.write("data_batch", c10::IValue(s.cursor.batch));
  a.write("ema_count", c10::IValue(static_cast<int64_t>(0)));
  for (const auto& [name, t] : named_state(*s.net))
    a.write("model/" + name, t.detach());
  torch::serialize::OutputArchive optimizer;
  write_step_count(s.optimizer);
  s.optimizer.state->save(optimizer);
  a.write("optimizer", optimizer);
  write_with_trailer(path, a);
}

void load_classifier_checkpoint(const std::string& path, ClassifierState& s) {
  require_kind(read_checkpoint_info(path), path, "classifier");
  auto a = open_archive(path);
  check_no_unexpected_tensors(a, path, *s.net);
  for (const auto& [name, t] : named_state(*s.net))
    copy_checked(path, name, t, read_tensor(a, path, "model/" + name));
  torch::serialize::InputArchive optimizer;
  if (!a.try_read("optimizer", optimizer))
    throw CheckpointError(path + ": checkpoint has no optimizer state");
  s.optimizer.state->load(optimizer);
  read_step_count(s.optimizer);
  s.step = read_int(a, path, "step");
  s.cursor = {read_int(a, path, "data_epoch"), read_int(a, path, "data_batch")};
}

void load_checkpoint(const std::string& path, TrainState& s, bool sampler_history) {
  auto a = open_archive(path);
  check_no_unexpected_tensors(a, path, *s.net);
  const int64_t ema_count = read_int(a, path, "ema_count");
  if (ema_count != static_cast<int64_t>(s.emas.size()))
    throw CheckpointError(path + ": checkpoint has " + std::to_string(ema_count) +
                          " EMA rates, the config " + std::to_string(s.emas.size()));
  for (const auto& [key, t] : named_state_tensors(s))
    if (sampler_history || key.rfind("sampler/", 0) != 0)
      copy_checked(path, key, t, read_tensor(a, path, key));
  torch::serialize::InputArchive optimizer;
  if (!a.try_read("optimizer", optimizer))
    throw CheckpointError(path + ": checkpoint has no optimizer state");
  s.optimizer.state->load(optimizer);
  read_step_count(s.optimizer);
  if (!phema::load_state(a, path, s.phema))
    spdlog::warn(
        "{}: no post-hoc EMA profiles (written before difftrain tracked them, or with "
        "training.phema.sigma_rels: []): they start afresh and average the steps from "
        "here on",
        path);
  s.step = read_int(a, path, "step");
  s.cursor = {read_int(a, path, "data_epoch"), read_int(a, path, "data_batch")};
}

std::string checkpoint_problem(const std::string& path) {
  try {
    return problem_of(read_file(path));
  } catch (const CheckpointError& e) {
    return e.what();
  }
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  auto a = open_archive(path);
  CheckpointInfo info;
  info.step = read_int(a, path, "step");
  c10::IValue config;
  if (!a.try_read("config_yaml", config) || !config.isString())
    throw CheckpointError(path + ": checkpoint has no config");
  info.config_yaml = config.toStringRef();
  c10::IValue imported_from;
  if (a.try_read("imported_from", imported_from) && imported_from.isString())
    info.imported_from = imported_from.toStringRef();
  c10::IValue kind;  // absent before classifiers: a diffusion model's
  if (a.try_read("kind", kind) && kind.isString()) info.kind = kind.toStringRef();
  return info;
}

void require_kind(const CheckpointInfo& info, const std::string& path, const std::string& kind) {
  if (info.kind == kind) return;
  if (info.kind == "classifier")
    throw CheckpointError(path +
                          ": is a noisy classifier's checkpoint (difftrain train-classifier), not "
                          "a diffusion model's: pass it to difftrain sample --classifier");
  throw CheckpointError(path + ": is a diffusion model's checkpoint, not a " + kind + "'s");
}

void load_model_weights(const std::string& path, torch::nn::Module& model,
                        std::optional<double> ema_rate) {
  auto a = open_archive(path);
  check_no_unexpected_tensors(a, path, model);
  const auto state = named_state(model);
  if (!ema_rate) {
    for (const auto& [name, t] : state)
      copy_checked(path, name, t, read_tensor(a, path, "model/" + name));
    return;
  }
  const int64_t ema_count = read_int(a, path, "ema_count");
  std::string rates;
  for (int64_t i = 0; i < ema_count; ++i) {
    c10::IValue rate;
    a.read("ema/" + std::to_string(i) + "/rate", rate);
    rates += (rates.empty() ? "" : ", ") + std::to_string(rate.toDouble());
    if (std::abs(rate.toDouble() - *ema_rate) > 1e-12) continue;
    // EMAs hold the parameters in the model's parameter order; buffers come from the model.
    const auto params = model.parameters();
    for (std::size_t j = 0; j < params.size(); ++j)
      copy_checked(path, ema_key(i, j), params[j], read_tensor(a, path, ema_key(i, j)));
    for (const auto& b : model.named_buffers())
      copy_checked(path, b.key(), b.value(), read_tensor(a, path, "model/" + b.key()));
    return;
  }
  throw CheckpointError(path + ": no EMA with rate " + std::to_string(*ema_rate) +
                        " (the checkpoint has: " + (rates.empty() ? "none" : rates) + ")");
}

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_%09lld.pt", static_cast<long long>(step));
  return (fs::path(run_dir) / "checkpoints" / name).string();
}

std::optional<int64_t> checkpoint_step(const std::string& path) {
  static const std::regex pattern(R"(ckpt_(\d{9})\.pt)");
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  return std::stoll(m[1].str());
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> found;
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return found;
  for (const auto& entry : fs::directory_iterator(dir))
    if (checkpoint_step(entry.path().string())) found.push_back(entry.path().string());
  std::sort(found.rbegin(), found.rend());  // zero-padded steps: newest first
  return found;
}

std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir) {
  for (const auto& path : list_checkpoints(run_dir)) {
    const std::string problem = checkpoint_problem(path);
    if (problem.empty()) return path;
    spdlog::warn("skipping checkpoint {}: {}", path, problem);
  }
  return std::nullopt;
}

std::string checkpoint_to_resume(const std::string& resume, const std::string& run_dir) {
  if (resume != "auto" && fs::is_directory(resume))
    throw CheckpointError("--resume " + resume +
                          ": a directory; give a checkpoint file (RUN/checkpoints/ckpt_<step>.pt), "
                          "or --resume auto for logging.run_dir's newest");
  if (resume != "auto") return resume;
  return latest_valid_checkpoint(run_dir).value_or("");
}

void prune_checkpoints(const std::string& run_dir, int64_t keep, int64_t step) {
  int64_t kept = 0;
  for (const auto& path : list_checkpoints(run_dir)) {
    if (*checkpoint_step(path) > step) continue;
    if (kept++ >= keep) fs::remove(path);
  }
}

std::string superseded_folder(const std::string& dir, int64_t step) {
  const std::string base = "superseded_at_step_" + std::to_string(step);
  fs::path folder = fs::path(dir) / base;
  for (int k = 2; fs::exists(folder); ++k)
    folder = fs::path(dir) / (base + "_" + std::to_string(k));
  return folder.string();
}

std::string set_aside_checkpoints_after(const std::string& run_dir, int64_t step) {
  std::vector<std::string> later;
  for (const auto& path : list_checkpoints(run_dir))
    if (*checkpoint_step(path) > step) later.push_back(path);
  if (later.empty()) return "";
  const fs::path folder = superseded_folder((fs::path(run_dir) / "checkpoints").string(), step);
  fs::create_directories(folder);
  for (const auto& path : later)
    fs::rename(path, folder / fs::path(path).filename());
  spdlog::warn(
      "moved {} checkpoint(s) after step {} to {}: not this run's, which continues from "
      "step {}",
      later.size(), step, folder.string(), step);
  return folder.string();
}

}  // namespace difftrain::train
