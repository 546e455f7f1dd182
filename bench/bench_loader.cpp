// Loader throughput in images/s on Fashion-MNIST shards, one I/O thread per rank, against a plain
// sequential HDF5 read of the same data. Not a test: numbers go to a JSON file and a table.
//
//   build/bench_loader [--manifest DIR] [--out bench/results/loader.json] [--batch 128]
//
// Without --manifest it converts /usr/share/datasets/fashion-mnist (train) with h5shard first.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <hdf5.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "data/error.hpp"
#include "data/loader.hpp"
#include "data/manifest.hpp"

namespace {

namespace fs = std::filesystem;
using namespace difftrain::data;
using Clock = std::chrono::steady_clock;

struct Result {
  std::string name;
  std::string what;
  int64_t images = 0;
  double seconds = 0;
  double cpu_seconds = 0;  // all threads of the process: on a shared machine, the fairer measure
  double rate() const { return seconds > 0 ? static_cast<double>(images) / seconds : 0; }
  double cpu_rate() const {
    return cpu_seconds > 0 ? static_cast<double>(images) / cpu_seconds : 0;
  }
};

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  const auto sec = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6;
  };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// The baseline: each shard's images read whole with one H5Dread, as a script would.
Result sequential_read(const Manifest& m) {
  Result r{"hdf5_sequential", "H5Dread of each whole shard, uint8, no conversion", 0, 0, 0};
  const auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  std::vector<uint8_t> buf;
  for (std::size_t i = 0; i < m.shards.size(); ++i) {
    const hid_t f = H5Fopen(m.shard_path(i).c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    const hid_t ds = H5Dopen2(f, "images", H5P_DEFAULT);
    buf.resize(static_cast<std::size_t>(m.shards[i].num_samples * m.height * m.width * m.channels));
    if (H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
      throw Error(m.shard_path(i) + ": read failed");
    H5Dclose(ds);
    H5Fclose(f);
    r.images += m.shards[i].num_samples;
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.cpu_seconds = cpu_seconds() - cpu_start;
  return r;
}

// One rank's loader for `epochs` epochs; time from the first next() (the queue starts empty).
Result loader_run(const std::string& name, const std::string& what, LoaderOptions o, int epochs) {
  const double cpu_start = cpu_seconds();
  const auto start = Clock::now();
  Loader loader(o);
  Result r{name, what, 0, 0, 0};
  const int64_t steps = loader.batches_per_epoch() * epochs;
  double checksum = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const Batch b = loader.next();
    checksum += b.images.data_ptr<float>()[0];  // touch the data
    r.images += b.images.size(0);
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.cpu_seconds = cpu_seconds() - cpu_start;
  if (checksum == 12345.678) spdlog::info("(unlikely)");
  return r;
}

std::string convert_fashion_mnist(const fs::path& dir) {
  const std::string source = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(source + "/train-images-idx3-ubyte.gz"))
    throw Error(source + ": Fashion-MNIST not installed (dataset-fashion-mnist); pass --manifest");
  const std::string cmd = std::string(H5SHARD_BINARY) + " convert --format idx --split train " +
                          "--shards 4 --quiet --input " + source + " --out " + dir.string();
  if (std::system(cmd.c_str()) != 0) throw Error("h5shard convert failed: " + cmd);
  return dir.string();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_loader: data loader throughput (images/s)"};
  std::string manifest;
  std::string out = "bench/results/loader.json";
  int64_t batch = 128;
  int epochs = 2;
  app.add_option("--manifest", manifest, "Shard set (default: Fashion-MNIST train, converted)");
  app.add_option("--out", out, "JSON results file")->default_val(out);
  app.add_option("--batch", batch, "Global batch size")->default_val(batch);
  app.add_option("--epochs", epochs, "Epochs per loader measurement")->default_val(epochs);
  CLI11_PARSE(app, argc, argv);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  at::set_num_threads(1);  // one compute thread: the loader must not lean on the trainer's cores

  try {
    fs::path tmp;
    if (manifest.empty()) {
      tmp = fs::temp_directory_path() / fmt::format("bench-loader-{}", ::getpid());
      manifest = convert_fashion_mnist(tmp / "fashion-mnist-train");
    }
    const Manifest m = read_manifest(manifest);
    LoaderOptions base;
    base.manifest = manifest;
    base.global_batch = batch;
    base.seed = 1;

    std::vector<Result> results;
    sequential_read(m);  // warm the page cache: every run below reads from memory
    results.push_back(sequential_read(m));
    results.push_back(loader_run("loader", "1 rank, shuffled, float NCHW [-1, 1]", base, epochs));
    LoaderOptions flip = base;
    flip.random_flip = true;
    results.push_back(loader_run("loader_flip", "... and random flip", flip, epochs));
    LoaderOptions train = flip;
    train.pad_to = 32;
    train.labels = m.labels;
    results.push_back(loader_run("loader_flip_pad32_labels",
                                 "... and pad to 32x32 and labels (the trainer's setup)", train,
                                 epochs));
    LoaderOptions rank = train;
    rank.world = 4;
    rank.rank = 1;
    results.push_back(
        loader_run("loader_rank_of_4", "rank 1 of 4 (B/4 rows), flip, pad, labels", rank, epochs));

    nlohmann::ordered_json j;
    j["benchmark"] = "loader";
    j["manifest"] = m.path;
    j["num_samples"] = m.num_samples();
    j["image"] = {m.height, m.width, m.channels};
    j["global_batch"] = batch;
    j["epochs"] = epochs;
    j["io_threads_per_rank"] = 1;
    j["hardware_threads"] = std::thread::hardware_concurrency();
    j["results"] = nlohmann::ordered_json::array();
    fmt::print("{:<26} {:>10} {:>14} {:>8}  {}\n", "run", "images/s", "images/cpu-s", "seconds",
               "what");
    for (const Result& r : results) {
      fmt::print("{:<26} {:>10.0f} {:>14.0f} {:>8.3f}  {}\n", r.name, r.rate(), r.cpu_rate(),
                 r.seconds, r.what);
      j["results"].push_back({{"name", r.name},
                              {"what", r.what},
                              {"images", r.images},
                              {"seconds", r.seconds},
                              {"cpu_seconds", r.cpu_seconds},
                              {"images_per_second", r.rate()},
                              {"images_per_cpu_second", r.cpu_rate()}});
    }
    const fs::path out_path(out);
    if (out_path.has_parent_path()) fs::create_directories(out_path.parent_path());
    std::ofstream(out) << j.dump(2) << '\n';
    fmt::print("results: {}\n", out);
    if (!tmp.empty()) fs::remove_all(tmp);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  return 0;
}
