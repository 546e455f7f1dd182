#include "weights/pt_file.hpp"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <ATen/core/Dict.h>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "weights/state_dict_unpickler.hpp"

namespace difftrain::weights {
namespace {

constexpr std::string_view kZipMagic{"PK\x03\x04", 4};

std::string file_start(const std::string& path, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw WeightsError(path + ": cannot open");
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<std::size_t>(in.gcount()));
  return s;
}

// LibTorch's messages run on with advice about miniz and a backtrace: their first sentence says it.
std::string first_sentence(const c10::Error& e) {
  std::string s = e.what_without_backtrace();
  s = s.substr(0, s.find('\n'));
  const auto stop = s.find(". ");
  return stop == std::string::npos ? s : s.substr(0, stop);
}

// The legacy format is a stream of pickles and raw storages, read whole.
StateDict load_legacy_pt(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string file{std::istreambuf_iterator<char>(in), {}};
  if (!in.eof() && !in) throw WeightsError(path + ": cannot read");
  try {
    return unpickle_legacy_state_dict(file);
  } catch (const WeightsError& e) {
    throw WeightsError(path + " (PyTorch's legacy format): " + e.what());
  }
}

}  // namespace

void save_pt(const StateDict& state, const std::string& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : state)
    dict.insert(name, t);
  std::vector<char> pickle;
  // Untagged: with type tags (torch::pickle_save's default) Python needs
  // torch.jit._pickle.restore_type_tag, which torch.load(weights_only=True) refuses.
  torch::jit::Pickler pickler(
      [&](const char* p, size_t n) { pickle.insert(pickle.end(), p, p + n); }, nullptr, nullptr,
      nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(dict);
  pickler.stop();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw WeightsError(path + ": cannot create");
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
      out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
      return out ? n : 0;
    });
    torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(),
                                       writer);
    writer.writeEndOfFile();
    out.flush();
    if (!out) throw WeightsError(path + ": cannot write (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}

StateDict load_pt(const std::string& path) {
  const std::string start = file_start(path, kLegacyMagicPickle.size());
  if (start.starts_with(kLegacyMagicPickle)) return load_legacy_pt(path);
  if (!start.starts_with(kZipMagic))
    throw WeightsError(path +
                       ": not a PyTorch weights file (neither torch.save's zip archive nor its "
                       "legacy format)");
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord("byteorder")) {
      const auto [data, size] = reader.getRecord("byteorder");
      if (std::string(static_cast<const char*>(data.get()), size) != "little")
        throw WeightsError(path +
                           ": written on a big-endian machine, which difftrain does not read");
    }
    const auto [pickle, size] = reader.getRecord("data.pkl");
    const auto load_storage = [&](const std::string& key, at::ScalarType dtype, int64_t numel) {
      const auto [bytes, n] = reader.getRecord("data/" + key);
      at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
      if (n != t.nbytes())
        throw WeightsError(fmt::format("storage {} holds {} bytes, not the {} its tensor needs",
                                       key, n, t.nbytes()));
      std::memcpy(t.data_ptr(), bytes.get(), n);
      return t;
    };
    return unpickle_state_dict({static_cast<const char*>(pickle.get()), size}, load_storage);
  } catch (const c10::Error& e) {
    throw WeightsError(path + ": not a complete PyTorch zip archive (truncated or corrupt?): " +
                       first_sentence(e));
  } catch (const WeightsError& e) {
    if (std::string_view(e.what()).starts_with(path)) throw;
    throw WeightsError(path + ": " + e.what());
  }
}

}  // namespace difftrain::weights
