#include "data/manifest.hpp"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/error.hpp"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kFormat = "difftrain-shards";

// Typed field access with messages that name the file and the field.
class Fields {
 public:
  Fields(const json& j, std::string file, std::string where)
      : j_(j), file_(std::move(file)), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(file_ + ": " + what); }

  const json& at(const std::string& key) const {
    if (!j_.contains(key)) fail("missing field '" + where_ + key + "'");
    return j_.at(key);
  }
  int64_t integer(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_number_integer()) fail("field '" + where_ + key + "' is not an integer");
    return v.get<int64_t>();
  }
  int64_t positive(const std::string& key) const {
    const int64_t v = integer(key);
    if (v <= 0) fail("field '" + where_ + key + "' must be positive, not " + std::to_string(v));
    return v;
  }
  std::string string(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_string()) fail("field '" + where_ + key + "' is not a string");
    return v.get<std::string>();
  }
  bool boolean(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_boolean()) fail("field '" + where_ + key + "' is not true or false");
    return v.get<bool>();
  }

 private:
  const json& j_;
  std::string file_;
  std::string where_;
};

ShardInfo parse_shard(const json& j, const std::string& file, std::size_t i) {
  const Fields f(j, file, "shards[" + std::to_string(i) + "].");
  if (!j.is_object()) f.fail("shards[" + std::to_string(i) + "] is not an object");
  ShardInfo s;
  s.file = f.string("file");
  const fs::path p(s.file);
  if (s.file.empty() || p.is_absolute() || s.file.find("..") != std::string::npos)
    f.fail("shard file name '" + s.file + "' must be a plain name relative to the manifest");
  s.num_samples = f.integer("num_samples");
  if (s.num_samples <= 0) f.fail("shard " + s.file + " is empty (num_samples 0)");
  if (j.contains("bytes")) s.bytes = f.positive("bytes");
  if (j.contains("checksum")) {
    s.checksum = f.string("checksum");
    if (s.checksum.rfind("crc32:", 0) != 0 || s.checksum.size() != 14)
      f.fail("shard " + s.file + ": checksum '" + s.checksum + "' is not crc32:<8 hex digits>");
  }
  return s;
}

Manifest parse(const json& j, const std::string& file) {
  const Fields f(j, file, "");
  if (!j.is_object()) f.fail("not a manifest (a JSON object is expected)");
  if (f.string("format") != kFormat) f.fail("not a difftrain shard manifest (format)");
  Manifest m;
  m.path = file;
  m.format_version = static_cast<int>(f.integer("format_version"));
  if (m.format_version < 1 || m.format_version > Manifest::kFormatVersion)
    f.fail("format_version " + std::to_string(m.format_version) +
           " is not supported (this build reads 1 to " + std::to_string(Manifest::kFormatVersion) +
           ")");
  m.name = j.contains("name") ? f.string("name") : "";
  m.height = f.positive("height");
  m.width = f.positive("width");
  m.channels = f.positive("channels");
  m.labels = f.boolean("labels");
  if (m.labels) {
    m.num_classes = f.positive("num_classes");
    if (j.contains("class_names")) {
      const json& names = f.at("class_names");
      if (!names.is_array()) f.fail("field 'class_names' is not an array");
      for (const json& n : names) {
        if (!n.is_string()) f.fail("field 'class_names' holds a non-string");
        m.class_names.push_back(n.get<std::string>());
      }
      if (!m.class_names.empty() && static_cast<int64_t>(m.class_names.size()) != m.num_classes)
        f.fail(std::to_string(m.class_names.size()) + " class_names for " +
               std::to_string(m.num_classes) + " classes");
    }
  }
  if (j.contains("compression")) m.compression = f.string("compression");
  const json& shards = f.at("shards");
  if (!shards.is_array() || shards.empty()) f.fail("field 'shards' must be a non-empty array");
  for (std::size_t i = 0; i < shards.size(); ++i) {
    m.shards.push_back(parse_shard(shards[i], file, i));
    for (std::size_t k = 0; k < i; ++k)
      if (m.shards[k].file == m.shards[i].file)
        f.fail("shard " + m.shards[i].file + " is listed twice");
  }
  if (j.contains("num_samples") && f.integer("num_samples") != m.num_samples())
    f.fail("num_samples " + std::to_string(f.integer("num_samples")) +
           " is not the sum over the shards, " + std::to_string(m.num_samples()));
  if (j.contains("source")) m.source = f.at("source").dump();
  return m;
}

}  // namespace

int64_t Manifest::num_samples() const {
  int64_t n = 0;
  for (const ShardInfo& s : shards)
    n += s.num_samples;
  return n;
}

std::string Manifest::directory() const {
  const fs::path dir = fs::path(path).parent_path();
  return dir.empty() ? "." : dir.string();
}

std::string Manifest::shard_path(std::size_t i) const {
  return (fs::path(directory()) / shards.at(i).file).string();
}

std::string manifest_path(const std::string& path) {
  return fs::is_directory(path) ? (fs::path(path) / "manifest.json").string() : path;
}

Manifest read_manifest(const std::string& path) {
  if (path.empty()) throw Error("no manifest given (a manifest.json or its directory)");
  const std::string file = manifest_path(path);
  std::ifstream in(file);
  if (!in) throw Error(file + ": cannot open the manifest (no such file?)");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(file + ": not valid JSON: " + e.what());
  }
  return parse(j, file);
}

void write_manifest(const Manifest& m, const std::string& path) {
  ordered_json j;
  j["format"] = kFormat;
  j["format_version"] = m.format_version;
  j["name"] = m.name;
  j["num_samples"] = m.num_samples();
  j["height"] = m.height;
  j["width"] = m.width;
  j["channels"] = m.channels;
  j["labels"] = m.labels;
  if (m.labels) {
    j["num_classes"] = m.num_classes;
    j["class_names"] = m.class_names;
  }
  j["compression"] = m.compression;
  j["shards"] = ordered_json::array();
  for (const ShardInfo& s : m.shards) {
    ordered_json e;
    e["file"] = s.file;
    e["num_samples"] = s.num_samples;
    if (s.bytes >= 0) e["bytes"] = s.bytes;
    if (!s.checksum.empty()) e["checksum"] = s.checksum;
    j["shards"].push_back(e);
  }
  j["source"] = ordered_json::parse(m.source);
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << '\n';
    out.close();
    if (!out) throw Error(tmp + ": cannot write the manifest");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error(path + ": cannot move the manifest into place: " + ec.message());
}

}  // namespace difftrain::data
