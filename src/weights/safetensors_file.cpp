#include "weights/safetensors_file.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace difftrain::weights {
namespace {

static_assert(
    std::endian::native == std::endian::little,
    "safetensors stores little-endian bytes; this build writes them as they are in memory");

using json = nlohmann::ordered_json;

const std::map<at::ScalarType, std::string>& dtype_names() {
  static const std::map<at::ScalarType, std::string> names{
      {at::kFloat, "F32"}, {at::kDouble, "F64"}, {at::kHalf, "F16"},  {at::kBFloat16, "BF16"},
      {at::kLong, "I64"},  {at::kInt, "I32"},    {at::kShort, "I16"}, {at::kChar, "I8"},
      {at::kByte, "U8"},   {at::kBool, "BOOL"}};
  return names;
}

at::ScalarType dtype_of(const std::string& name, const std::string& where) {
  for (const auto& [dtype, n] : dtype_names())
    if (n == name) return dtype;
  throw WeightsError(where + ": dtype " + name + ", which difftrain does not read");
}

}  // namespace

void save_safetensors(const StateDict& state, const std::string& path,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [name, t] : state) {
    const auto dtype = dtype_names().find(t.scalar_type());
    if (dtype == dtype_names().end())
      throw WeightsError(path + ": cannot store '" + name + "' of dtype " +
                         c10::toString(t.scalar_type()));
    header[name] = {{"dtype", dtype->second},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  // Padded with spaces so that the data starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_size = text.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw WeightsError(path + ": cannot create");
    out.write(reinterpret_cast<const char*>(&header_size), sizeof header_size);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : state) {
      const at::Tensor c = t.contiguous();
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
    }
    out.flush();
    if (!out) throw WeightsError(path + ": cannot write (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}

StateDict load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw WeightsError(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();

  uint64_t header_size = 0;
  if (bytes.size() < sizeof header_size) throw WeightsError(path + ": too short for safetensors");
  std::memcpy(&header_size, bytes.data(), sizeof header_size);
  if (header_size > bytes.size() - sizeof header_size)
    throw WeightsError(
        fmt::format("{}: its header claims {} bytes, the file holds {} (truncated, "
                    "or not safetensors)",
                    path, header_size, bytes.size() - sizeof header_size));
  const json header = json::parse(bytes.substr(sizeof header_size, header_size), nullptr, false);
  if (!header.is_object())
    throw WeightsError(path + ": the safetensors header is not a JSON object");
  const std::size_t data_start = sizeof header_size + header_size;
  const std::size_t data_size = bytes.size() - data_start;

  StateDict state;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    try {
      const at::ScalarType dtype = dtype_of(entry.at("dtype").get<std::string>(), where);
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto range = entry.at("data_offsets").get<std::vector<std::size_t>>();
      at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
      if (range.size() != 2 || range[1] < range[0] || range[1] - range[0] != t.nbytes())
        throw WeightsError(fmt::format("{}: data_offsets do not hold the {} bytes of its shape {}",
                                       where, t.nbytes(), shape_string(shape)));
      if (range[1] > data_size)
        throw WeightsError(where + ": its bytes lie past the end of the file (truncated?)");
      std::memcpy(t.data_ptr(), bytes.data() + data_start + range[0], t.nbytes());
      state.push_back({name, t});
    } catch (const json::exception& e) {
      throw WeightsError(where + ": malformed header entry (" + e.what() + ")");
    } catch (const c10::Error& e) {
      throw WeightsError(where + ": " + e.what_without_backtrace());
    }
  }
  return state;
}

}  // namespace difftrain::weights
