#include "data/shard_writer.hpp"

#include <filesystem>

#include "data/error.hpp"
#include "data/shard_layout.hpp"

namespace difftrain::data {
namespace {
namespace fs = std::filesystem;
}  // namespace

ShardWriter::ShardWriter(const std::string& directory, const std::string& file,
                         const ShardSpec& spec)
    : file_(file),
      path_((fs::path(directory) / file).string()),
      partial_(path_ + ".partial"),
      spec_(spec) {
  if (spec.num_samples <= 0) throw Error(path_ + ": a shard needs at least one sample");
  try {
    h5_.emplace(h5::File::create(partial_, h5::FileFormat::v110));
    h5_->set_attr("format", shard::kFormat);
    h5_->set_attr("format_version", int64_t{shard::kFormatVersion});
    h5_->set_attr("height", spec.height);
    h5_->set_attr("width", spec.width);
    h5_->set_attr("channels", spec.channels);
    h5_->set_attr("num_samples", spec.num_samples);
    h5_->set_attr("first_index", spec.first_index);
    h5_->set_attr("source", spec.source);
    // One sample per chunk: a random read touches exactly one chunk.
    const h5::DatasetOptions options{.chunk = {1, spec.height, spec.width, spec.channels},
                                     .compression = spec.compression};
    h5_->create_dataset<uint8_t>(
        shard::kImages, {spec.num_samples, spec.height, spec.width, spec.channels}, options);
    images_.emplace(*h5_, shard::kImages);
  } catch (const h5::Error& e) {
    discard();
    throw Error(e.what());
  }
  if (spec.labels) labels_.reserve(static_cast<std::size_t>(spec.num_samples));
}

ShardWriter::~ShardWriter() {
  if (!finished_) discard();
}

void ShardWriter::discard() noexcept {
  images_.reset();
  h5_.reset();
  std::error_code ec;
  fs::remove(partial_, ec);
}

void ShardWriter::append(const uint8_t* images, const int64_t* labels, int64_t count) {
  if (written_ + count > spec_.num_samples)
    throw Error(path_ + ": more samples appended than the " + std::to_string(spec_.num_samples) +
                " planned");
  try {
    images_->write(written_, count, images);
  } catch (const h5::Error& e) {
    throw Error(e.what());
  }
  crc_.update(images, static_cast<std::size_t>(count * images_->row_elements()));
  if (spec_.labels) labels_.insert(labels_.end(), labels, labels + count);
  written_ += count;
}

ShardInfo ShardWriter::finish() {
  if (written_ != spec_.num_samples)
    throw Error(path_ + ": " + std::to_string(written_) + " samples written of " +
                std::to_string(spec_.num_samples));
  try {
    if (spec_.labels) {
      h5_->write<int64_t>(shard::kLabels, {spec_.num_samples}, labels_.data());
      crc_.update(labels_.data(), labels_.size() * sizeof(int64_t));
    }
    images_.reset();
    h5_->close();
  } catch (const h5::Error& e) {
    throw Error(e.what());
  }
  std::error_code ec;
  fs::rename(partial_, path_, ec);
  if (ec) throw Error(path_ + ": cannot move the finished shard into place: " + ec.message());
  finished_ = true;
  return ShardInfo{.file = file_,
                   .num_samples = spec_.num_samples,
                   .bytes = static_cast<int64_t>(fs::file_size(path_)),
                   .checksum = crc_.str()};
}

}  // namespace difftrain::data
