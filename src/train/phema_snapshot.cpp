#include "train/phema_snapshot.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>

#include "data/checksum.hpp"
#include "train/checkpoint.hpp"

namespace fs = std::filesystem;

namespace difftrain::train::phema {
namespace {

constexpr char kMagic[8] = {'D', 'T', 'P', 'H', 'E', 'M', 'A', '1'};
constexpr double kFloat16Max = 65504;

struct Trailer {
  uint32_t crc;
  uint32_t version;
  uint64_t offset;  // where the trailer starts: the file's size less the trailer
  char magic[8];
};
static_assert(sizeof(Trailer) == 24);

const std::regex& snapshot_name() {
  static const std::regex pattern(R"(snapshot_(\d{9})\.phema)");
  return pattern;
}

constexpr std::array<at::ScalarType, 9> kDtypes{at::kHalf,   at::kBFloat16, at::kFloat,
                                                at::kDouble, at::kLong,     at::kInt,
                                                at::kShort,  at::kByte,     at::kBool};

at::ScalarType dtype_named(const std::string& name, const std::string& path) {
  for (at::ScalarType t : kDtypes)
    if (name == c10::toString(t)) return t;
  throw SnapshotError(path + ": unknown tensor dtype '" + name + "' in the snapshot header");
}

int64_t nbytes(const SnapshotTensor& t) {
  int64_t n = static_cast<int64_t>(c10::elementSize(t.dtype));
  for (int64_t d : t.shape)
    n *= d;
  return n;
}

class Writer {
 public:
  explicit Writer(const std::string& path) : path_(path), out_(path, std::ios::binary) {
    if (!out_) throw SnapshotError(path + ": cannot create the snapshot file");
  }
  void write(const void* data, std::size_t bytes) {
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    crc_.update(data, bytes);
    written_ += bytes;
  }
  void finish() {
    Trailer t{crc_.value(), kSnapshotFormatVersion, written_, {}};
    std::memcpy(t.magic, kMagic, sizeof kMagic);
    out_.write(reinterpret_cast<const char*>(&t), sizeof t);
    out_.flush();
    if (!out_) throw SnapshotError(path_ + ": cannot write the snapshot (disk full?)");
  }

 private:
  std::string path_;
  std::ofstream out_;
  data::Crc32 crc_;
  uint64_t written_ = 0;
};

}  // namespace

std::string snapshot_dir(const std::string& run_dir) {
  return (fs::path(run_dir) / "phema").string();
}

std::string snapshot_path(const std::string& run_dir, int64_t step) {
  return (fs::path(snapshot_dir(run_dir)) /
          fmt::format("snapshot_{:09d}.phema", static_cast<long long>(step)))
      .string();
}

void write_snapshot(const std::string& run_dir, int64_t step, const PowerFunctionEma& ema,
                    const torch::nn::Module& model, const std::string& config_yaml) {
  if (ema.profiles.empty() || step <= 0) return;
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters())
    names.push_back(p.key());

  // Each profile tensor in float16 when its largest magnitude fits, found for all tensors with one
  // host synchronisation; buffers as they are.
  std::vector<std::pair<SnapshotTensor, at::Tensor>> tensors;
  for (std::size_t k = 0; k < ema.profiles.size(); ++k) {
    const std::vector<at::Tensor>& params = ema.profiles[k].params;
    if (params.size() != names.size())
      throw SnapshotError(fmt::format("post-hoc EMA profile {} has {} tensors, the model {}", k,
                                      params.size(), names.size()));
    const at::Tensor max_abs =
        at::stack(at::_foreach_norm(params, std::numeric_limits<double>::infinity()))
            .to(at::kDouble)
            .cpu();
    for (std::size_t j = 0; j < params.size(); ++j) {
      const bool fits = max_abs[static_cast<int64_t>(j)].item<double>() <= kFloat16Max;
      const at::ScalarType dtype = fits ? at::kHalf : at::kFloat;
      tensors.push_back(
          {{names[j], static_cast<int64_t>(k), dtype, params[j].sizes().vec()}, params[j]});
    }
  }
  for (const auto& b : model.named_buffers())
    tensors.push_back({{b.key(), -1, b.value().scalar_type(), b.value().sizes().vec()}, b.value()});

  nlohmann::json header;
  header["format_version"] = kSnapshotFormatVersion;
  header["step"] = step;
  header["images"] = ema.images.item<double>();
  for (const Profile& p : ema.profiles)
    header["profiles"].push_back({{"sigma_rel", p.sigma_rel}, {"gamma", p.gamma}});
  header["config_yaml"] = config_yaml;
  for (const auto& [info, t] : tensors)
    header["tensors"].push_back({{"name", info.name},
                                 {"profile", info.profile},
                                 {"dtype", c10::toString(info.dtype)},
                                 {"shape", info.shape}});
  const std::string header_text = header.dump();

  const std::string path = snapshot_path(run_dir, step), tmp = path + ".tmp";
  fs::create_directories(snapshot_dir(run_dir));
  {
    Writer w(tmp);
    const uint64_t header_size = header_text.size();
    w.write(kMagic, sizeof kMagic);
    w.write(&header_size, sizeof header_size);
    w.write(header_text.data(), header_text.size());
    for (const auto& [info, t] : tensors) {
      const at::Tensor host = t.detach().to(at::kCPU, info.dtype).contiguous();
      w.write(host.data_ptr(), host.nbytes());
    }
    w.finish();
  }
  fs::rename(tmp, path);
}

Snapshot read_snapshot(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SnapshotError(path + ": cannot open the snapshot");
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec || size < sizeof kMagic + sizeof(uint64_t) + sizeof(Trailer))
    throw SnapshotError(path + ": too short to be a post-hoc EMA snapshot (truncated?)");
  char magic[8];
  uint64_t header_size = 0;
  in.read(magic, sizeof magic);
  in.read(reinterpret_cast<char*>(&header_size), sizeof header_size);
  if (!in || std::memcmp(magic, kMagic, sizeof kMagic) != 0)
    throw SnapshotError(path + ": not a post-hoc EMA snapshot (no DTPHEMA1 magic)");
  Trailer t;
  in.seekg(static_cast<std::streamoff>(size - sizeof t));
  in.read(reinterpret_cast<char*>(&t), sizeof t);
  if (!in || std::memcmp(t.magic, kMagic, sizeof kMagic) != 0 || t.offset != size - sizeof t)
    throw SnapshotError(path + ": no intact snapshot trailer (truncated?)");
  if (t.version != kSnapshotFormatVersion)
    throw SnapshotError(fmt::format("{}: snapshot format version {}, this build reads {}", path,
                                    t.version, kSnapshotFormatVersion));
  Snapshot s;
  s.path = path;
  s.data_offset = sizeof magic + sizeof header_size + header_size;
  if (s.data_offset > t.offset) throw SnapshotError(path + ": header runs past the data");
  std::string text(header_size, '\0');
  in.seekg(static_cast<std::streamoff>(sizeof magic + sizeof header_size));
  in.read(text.data(), static_cast<std::streamsize>(header_size));
  try {
    const nlohmann::json h = nlohmann::json::parse(text);
    s.step = h.at("step").get<int64_t>();
    s.images = h.at("images").get<double>();
    s.config_yaml = h.at("config_yaml").get<std::string>();
    for (const auto& p : h.at("profiles")) {
      s.sigma_rels.push_back(p.at("sigma_rel").get<double>());
      s.gammas.push_back(p.at("gamma").get<double>());
    }
    for (const auto& e : h.at("tensors"))
      s.tensors.push_back({e.at("name").get<std::string>(), e.at("profile").get<int64_t>(),
                           dtype_named(e.at("dtype").get<std::string>(), path),
                           e.at("shape").get<std::vector<int64_t>>()});
  } catch (const nlohmann::json::exception& e) {
    throw SnapshotError(path + ": unreadable snapshot header: " + e.what());
  }
  uint64_t data_bytes = 0;
  for (const SnapshotTensor& e : s.tensors)
    data_bytes += static_cast<uint64_t>(nbytes(e));
  if (s.data_offset + data_bytes != t.offset)
    throw SnapshotError(path + ": the tensors' sizes do not add up to the file's");
  return s;
}

std::vector<Snapshot> list_snapshots(const std::string& run_dir) {
  std::vector<std::string> paths;
  const fs::path dir = snapshot_dir(run_dir);
  if (fs::is_directory(dir))
    for (const auto& entry : fs::directory_iterator(dir))
      if (std::regex_match(entry.path().filename().string(), snapshot_name()))
        paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());  // zero-padded steps: ascending
  std::vector<Snapshot> snapshots;
  for (const std::string& path : paths) {
    try {
      snapshots.push_back(read_snapshot(path));
    } catch (const SnapshotError& e) {
      spdlog::warn("skipping post-hoc EMA snapshot: {}", e.what());
    }
  }
  return snapshots;
}

int set_aside_snapshots_after(const std::string& run_dir, int64_t step) {
  const fs::path dir = snapshot_dir(run_dir);
  if (!fs::is_directory(dir)) return 0;
  std::vector<fs::path> later;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (std::regex_match(name, m, snapshot_name()) && std::stoll(m[1].str()) > step)
      later.push_back(entry.path());
  }
  if (later.empty()) return 0;
  const fs::path folder = train::superseded_folder(dir.string(), step);
  fs::create_directories(folder);
  for (const auto& path : later)
    fs::rename(path, folder / path.filename());
  return static_cast<int>(later.size());
}

void for_each_tensor(const Snapshot& s,
                     const std::function<void(const SnapshotTensor&, const at::Tensor&)>& visit) {
  std::ifstream in(s.path, std::ios::binary);
  if (!in) throw SnapshotError(s.path + ": cannot open the snapshot");
  data::Crc32 crc;
  std::string head(s.data_offset, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  crc.update(head.data(), head.size());
  for (const SnapshotTensor& info : s.tensors) {
    const at::Tensor t = at::empty(info.shape, at::TensorOptions().dtype(info.dtype));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    if (!in) throw SnapshotError(s.path + ": ends inside tensor '" + info.name + "' (truncated?)");
    crc.update(t.data_ptr(), t.nbytes());
    visit(info, t);
  }
  uint32_t stored = 0;
  in.read(reinterpret_cast<char*>(&stored), sizeof stored);
  if (!in || stored != crc.value())
    throw SnapshotError(s.path + ": checksum mismatch (a corrupt snapshot: delete it and rerun)");
}

}  // namespace difftrain::train::phema
