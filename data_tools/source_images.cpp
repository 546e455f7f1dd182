// A folder tree of PNG / JPEG images. Samples are ordered by path; a sample's class is its
// first-level sub-folder, classes numbered in name order.
#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>

#include "data/error.hpp"
#include "image_codec.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;
using data::Error;

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

}  // namespace

Source open_images(const std::string& root_arg, const std::string& split, int64_t channels,
                   bool no_labels) {
  if (channels != 1 && channels != 3) throw Error("--channels must be 1 or 3");
  fs::path root(root_arg);
  if (!fs::is_directory(root)) throw Error(root_arg + ": not a directory");
  if (!split.empty() && fs::is_directory(root / split)) root /= split;

  std::vector<fs::path> files;  // relative to root
  for (auto it =
           fs::recursive_directory_iterator(root, fs::directory_options::follow_directory_symlink);
       it != fs::recursive_directory_iterator(); ++it) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {  // hidden files and folders
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() && is_image_name(it->path()))
      files.push_back(fs::relative(it->path(), root));
  }
  if (files.empty()) throw Error(root.string() + ": no PNG or JPEG images in this folder tree");
  std::sort(files.begin(), files.end());

  Source s;
  s.size = static_cast<int64_t>(files.size());
  s.channels = channels;
  const auto in_subfolder = [](const fs::path& p) { return std::distance(p.begin(), p.end()) > 1; };
  const bool labeled = !no_labels && std::any_of(files.begin(), files.end(), in_subfolder);
  if (labeled) {
    std::map<std::string, int64_t> classes;
    for (const fs::path& f : files) {
      if (!in_subfolder(f))
        throw Error((root / f).string() +
                    ": an image outside the class sub-folders (or use --no-labels)");
      classes.emplace(f.begin()->string(), 0);
    }
    for (auto& [name, id] : classes) {
      id = static_cast<int64_t>(s.class_names.size());
      s.class_names.push_back(name);
    }
    for (const fs::path& f : files)
      s.labels.push_back(classes.at(f.begin()->string()));
  }
  s.files = {root.string()};
  auto paths = std::make_shared<std::vector<std::string>>();
  for (const fs::path& f : files)
    paths->push_back((root / f).string());
  s.read = [paths, channels](int64_t i) {
    return decode_image((*paths)[static_cast<std::size_t>(i)], channels);
  };
  s.describe = [paths](int64_t i) { return (*paths)[static_cast<std::size_t>(i)]; };
  return s;
}

}  // namespace difftrain::h5shard
