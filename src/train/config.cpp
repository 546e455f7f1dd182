#include "train/config.hpp"

#include <yaml-cpp/yaml.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "diffusion/schedule.hpp"
#include "diffusion/weighting.hpp"
#include "train/phema.hpp"

namespace difftrain::train {
namespace {

template <typename E, std::size_t N>
using Names = std::array<std::pair<const char*, E>, N>;

constexpr Names<ChannelsLast, 3> kChannelsLast{
    {{"auto", ChannelsLast::automatic}, {"true", ChannelsLast::on}, {"false", ChannelsLast::off}}};
constexpr Names<Loss, 4> kLosses{{{"hybrid", Loss::hybrid},
                                  {"simple", Loss::simple},
                                  {"vlb", Loss::vlb},
                                  {"vlb_unscaled", Loss::vlb_unscaled}}};
constexpr Names<Precision, 3> kPrecisions{
    {{"fp32", Precision::fp32}, {"bf16", Precision::bf16}, {"fp16", Precision::fp16}}};
constexpr Names<Tf32, 3> kTf32{
    {{"default", Tf32::library_default}, {"true", Tf32::on}, {"false", Tf32::off}}};

template <typename E, std::size_t N>
E parse_name(std::string_view name, const Names<E, N>& table) {
  std::vector<std::string> valid;
  for (const auto& [key, value] : table) {
    if (name == key) return value;
    valid.emplace_back(key);
  }
  throw std::invalid_argument("'" + std::string(name) +
                              "' is not one of: " + fmt::format("{}", fmt::join(valid, ", ")));
}

template <typename E, std::size_t N>
std::string name_of(E v, const Names<E, N>& table) {
  for (const auto& [key, value] : table)
    if (value == v) return key;
  return "?";
}

ChannelsLast parse_channels_last(std::string_view name) {
  return parse_name(name, kChannelsLast);
}
Loss parse_loss(std::string_view name) {
  return parse_name(name, kLosses);
}
Precision parse_precision(std::string_view name) {
  return parse_name(name, kPrecisions);
}
Tf32 parse_tf32(std::string_view name) {
  return parse_name(name, kTf32);
}

// One schema for reading and writing: visit() names every key once, and a Reader or a Writer
// walks it. A key added here is parsed, validated for unknown siblings and saved in the run's
// resolved config.
template <typename V>
void visit(V& v, Config& c) {
  v.key("seed", c.seed);
  v.key("deterministic", c.deterministic);
  v.choice("device", c.device, parallel::parse_device_request);
  v.section("data", [&] {
    v.key("train", c.data.train);
    v.key("validation", c.data.validation);
    v.choice("last_batch", c.data.last_batch, data::parse_last_batch);
    v.key("random_flip", c.data.random_flip);
    v.key("pad_to", c.data.pad_to);
    v.key("class_conditional", c.data.class_conditional);
    v.key("prefetch", c.data.prefetch);
  });
  v.section("model", [&] {
    v.key("image_size", c.model.image_size);
    v.key("in_channels", c.model.in_channels);
    v.key("num_classes", c.model.num_classes);
    v.key("model_channels", c.model.model_channels);
    v.key("channel_mult", c.model.channel_mult);
    v.key("num_res_blocks", c.model.num_res_blocks);
    v.key("attention_resolutions", c.model.attention_resolutions);
    v.key("num_heads", c.model.num_heads);
    v.key("num_head_channels", c.model.num_head_channels);
    v.key("dropout", c.model.dropout);
    v.key("use_scale_shift_norm", c.model.use_scale_shift_norm);
    v.key("conv_resample", c.model.conv_resample);
    v.key("resblock_updown", c.model.resblock_updown);
    v.key("use_new_attention_order", c.model.use_new_attention_order);
    v.key("low_res_size", c.model.low_res_size);
    v.key("low_res_noise", c.model.low_res_noise);
    v.key("use_checkpoint", c.model.use_checkpoint);
    v.choice("pool", c.model.pool, model::parse_pool);
    v.choice("channels_last", c.model.channels_last, parse_channels_last);
    v.key("fused_group_norm", c.model.fused_group_norm);
  });
  v.section("diffusion", [&] {
    v.choice("schedule", c.diffusion.schedule, diffusion::parse_beta_schedule);
    v.key("steps", c.diffusion.steps);
    v.key("zero_terminal_snr", c.diffusion.zero_terminal_snr);
    v.choice("model_mean_type", c.diffusion.model_mean_type, diffusion::parse_model_mean_type);
    v.choice("model_var_type", c.diffusion.model_var_type, diffusion::parse_model_var_type);
    v.choice("loss", c.diffusion.loss, parse_loss);
    v.key("vlb_weight", c.diffusion.vlb_weight);
    v.choice("weighting", c.diffusion.weighting, diffusion::parse_simple_weighting);
    v.key("min_snr_gamma", c.diffusion.min_snr_gamma);
    v.key("sigmoid_bias", c.diffusion.sigmoid_bias);
    v.choice("timestep_sampler", c.diffusion.timestep_sampler, diffusion::parse_timestep_sampler);
    v.key("stratified_timesteps", c.diffusion.stratified_timesteps);
    v.key("logit_normal_mean", c.diffusion.logit_normal_mean);
    v.key("logit_normal_std", c.diffusion.logit_normal_std);
    v.key("rescale_timesteps", c.diffusion.rescale_timesteps);
  });
  v.section("training", [&] {
    v.key("batch_size", c.training.batch_size);
    v.key("microbatch", c.training.microbatch);
    v.key("lr", c.training.lr);
    v.key("weight_decay", c.training.weight_decay);
    v.key("warmup_steps", c.training.warmup_steps);
    v.key("lr_anneal_steps", c.training.lr_anneal_steps);
    v.key("grad_clip", c.training.grad_clip);
    v.key("p_uncond", c.training.p_uncond);
    v.key("low_res_noise_max", c.training.low_res_noise_max);
    v.key("max_steps", c.training.max_steps);
    v.key("max_time", c.training.max_time);
    v.key("ema_rates", c.training.ema_rates);
    v.key("ema_warmup", c.training.ema_warmup);
    v.choice("precision", c.training.precision, parse_precision);
    v.choice("tf32", c.training.tf32, parse_tf32);
    v.key("cudnn_benchmark", c.training.cudnn_benchmark);
    v.key("loss_scale_init", c.training.loss_scale_init);
    v.key("loss_scale_growth_interval", c.training.loss_scale_growth_interval);
    v.key("loss_scale_min", c.training.loss_scale_min);
    v.key("max_bad_steps", c.training.max_bad_steps);
    v.key("checkpoint_every", c.training.checkpoint_every);
    v.key("keep_checkpoints", c.training.keep_checkpoints);
    v.key("threads", c.training.threads);
    v.key("watchdog_timeout", c.training.watchdog_timeout);
    v.key("check_replicas_every", c.training.check_replicas_every);
    v.key("bucket_mb", c.training.bucket_mb);
    v.section("phema", [&] {
      v.key("sigma_rels", c.training.phema.sigma_rels);
      v.key("snapshot_every", c.training.phema.snapshot_every);
    });
  });
  v.section("logging", [&] {
    v.key("run_dir", c.logging.run_dir);
    v.key("log_every", c.logging.log_every);
    v.key("timestep_stats_every", c.logging.timestep_stats_every);
    v.key("timestep_buckets", c.logging.timestep_buckets);
    v.key("bpd_every", c.logging.bpd_every);
    v.key("bpd_batch", c.logging.bpd_batch);
    v.key("bpd_timesteps", c.logging.bpd_timesteps);
    v.key("sample_every", c.logging.sample_every);
    v.key("sample_num", c.logging.sample_num);
    v.key("sample_steps", c.logging.sample_steps);
  });
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string unknown_key_message(const std::string& where, const std::string& key,
                                const std::vector<std::string>& valid) {
  std::string msg = "unknown key '" + where + key + "'";
  const auto closest = std::min_element(valid.begin(), valid.end(), [&](auto& a, auto& b) {
    return edit_distance(key, a) < edit_distance(key, b);
  });
  if (closest != valid.end() &&
      edit_distance(key, *closest) <= std::max<std::size_t>(2, key.size() / 3))
    msg += " (did you mean '" + where + *closest + "'?)";
  return msg + "; valid keys" +
         (where.empty() ? "" : " in '" + where.substr(0, where.size() - 1) + "'") + ": " +
         fmt::format("{}", fmt::join(valid, ", "));
}

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  if constexpr (std::is_integral_v<T>) return "an integer";
  if constexpr (std::is_floating_point_v<T>) return "a number";
  if constexpr (std::is_same_v<T, std::string>) return "a string";
  if constexpr (std::is_same_v<T, std::vector<int64_t>>) return "a list of integers";
  if constexpr (std::is_same_v<T, std::vector<double>>) return "a list of numbers";
  return "a value";
}

// Reads keys from the YAML tree section by section, remembering which keys it knows so that any
// other key in a section is reported with the closest valid one.
class Reader {
 public:
  // With `unknown_keys`, keys nobody knows are collected there instead of being errors.
  Reader(const YAML::Node& root, std::string origin,
         std::vector<std::string>* unknown_keys = nullptr)
      : origin_(std::move(origin)), unknown_keys_(unknown_keys) {
    stack_.push_back({root, "", {}});
  }

  template <typename T>
  void key(const char* name, T& value) {
    Frame& f = stack_.back();
    f.known.emplace_back(name);
    const YAML::Node n = std::as_const(f.node)[name];  // const access never inserts a key
    if (!n.IsDefined()) return;
    if (n.IsNull()) {
      if (unknown_keys_) return;  // a stored config: as written by another version
      throw ConfigError(origin_ + ": key '" + f.prefix + name +
                        "' has no value: give one, or leave the key out for its default");
    }
    try {
      value = n.as<T>();
    } catch (const YAML::Exception&) {
      throw ConfigError(origin_ + ": key '" + f.prefix + name + "' must be " + type_name<T>() +
                        ", got '" + YAML::Dump(n) + "'");
    }
  }

  // A named choice, read into its enum by `parse` (which throws naming the valid names).
  template <typename T, typename Parse>
  void choice(const char* name, T& value, Parse parse) {
    std::string text;
    key(name, text);
    if (text.empty()) return;
    try {
      value = parse(text);
    } catch (const std::exception& e) {
      throw ConfigError(origin_ + ": config key '" + stack_.back().prefix + name +
                        "': " + e.what());
    }
  }

  void section(const char* name, const std::function<void()>& body) {
    Frame& f = stack_.back();
    f.known.emplace_back(name);
    const YAML::Node n = std::as_const(f.node)[name];
    if (n.IsDefined() && !n.IsNull() && !n.IsMap())
      throw ConfigError(origin_ + ": section '" + name + "' must be a mapping of keys");
    const bool present = n.IsDefined() && n.IsMap();  // a missing section takes the defaults
    stack_.push_back({present ? n : YAML::Node(YAML::NodeType::Map), f.prefix + name + ".", {}});
    body();
    check_unknown_keys();
    stack_.pop_back();
  }

  // Also refuses a key given twice in one mapping: YAML reads the first and drops the other
  // silently (a second `training:` section, a key repeated further down).
  void check_unknown_keys() const {
    const Frame& f = stack_.back();
    std::set<std::string> seen;
    for (const auto& kv : f.node) {
      const std::string k = kv.first.as<std::string>();
      if (!seen.insert(k).second && !unknown_keys_)
        throw ConfigError(origin_ + ": key '" + f.prefix + k +
                          "' is given twice; only the first would be read");
      if (std::find(f.known.begin(), f.known.end(), k) != f.known.end()) continue;
      if (!unknown_keys_)
        throw ConfigError(origin_ + ": " + unknown_key_message(f.prefix, k, f.known));
      unknown_keys_->push_back(f.prefix + k);
    }
  }

 private:
  struct Frame {
    YAML::Node node;
    std::string prefix;
    std::vector<std::string> known;
  };
  std::string origin_;
  std::vector<std::string>* unknown_keys_;
  std::vector<Frame> stack_;
};

class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}
  template <typename T>
  void key(const char* name, const T& value) {
    out_ << YAML::Key << name << YAML::Value;
    if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>>)
      out_ << YAML::Flow << value;
    else
      out_ << value;
  }
  template <typename T, typename Parse>
  void choice(const char* name, const T& value, Parse) {
    out_ << YAML::Key << name << YAML::Value << to_string(value);
  }
  void section(const char* name, const std::function<void()>& body) {
    out_ << YAML::Key << name << YAML::Value << YAML::BeginMap;
    body();
    out_ << YAML::EndMap;
  }

 private:
  YAML::Emitter& out_;
};

// Applies "a.b=value" (or "a.b.c=value" for a key of a nested section) to the YAML tree; the
// value is parsed as YAML (numbers, lists, strings).
void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("override '" + assignment + "' must look like section.key=value");
  const std::string path = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError("override '" + assignment + "': value is not valid YAML: " + e.msg);
  }
  // Sections are walked through node copies, which share the tree (yaml-cpp nodes are handles).
  YAML::Node node = root;
  std::size_t begin = 0;
  for (auto dot = path.find('.'); dot != std::string::npos; dot = path.find('.', begin)) {
    const std::string section = path.substr(begin, dot - begin);
    if (!node[section] || node[section].IsNull()) node[section] = YAML::Node(YAML::NodeType::Map);
    if (!node[section].IsMap())
      throw ConfigError("override '" + assignment + "': '" + path.substr(0, dot) +
                        "' is not a section");
    node.reset(node[section]);
    begin = dot + 1;
  }
  node[path.substr(begin)] = value;
}

Config read(const YAML::Node& root, const std::string& origin,
            std::vector<std::string>* unknown_keys = nullptr) {
  if (!root.IsMap()) throw ConfigError(origin + ": the config must be a YAML mapping of sections");
  Config c;
  Reader reader(root, origin, unknown_keys);
  visit(reader, c);
  reader.check_unknown_keys();
  return c;
}

template <typename T>
void check(bool ok, const std::string& key, const T& value, const std::string& rule) {
  if (ok) return;
  std::ostringstream s;
  s << "config key '" << key << "' = " << value << " " << rule;
  throw ConfigError(s.str());
}

YAML::Node load_yaml(const std::string& yaml, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw ConfigError(origin + ": not valid YAML: " + e.msg + " (line " +
                      std::to_string(e.mark.line + 1) + ")");
  }
  return root.IsNull() ? YAML::Node(YAML::NodeType::Map) : root;
}
}  // namespace

std::string to_string(ChannelsLast v) {
  return name_of(v, kChannelsLast);
}
std::string to_string(Loss v) {
  return name_of(v, kLosses);
}
std::string to_string(Precision v) {
  return name_of(v, kPrecisions);
}
std::string to_string(Tf32 v) {
  return name_of(v, kTf32);
}

Config parse_config(const std::string& yaml, const std::vector<std::string>& overrides,
                    const std::string& origin) {
  YAML::Node root = load_yaml(yaml, origin);
  for (const auto& o : overrides)
    apply_override(root, o);
  return read(root, origin);
}

Config parse_stored_config(const std::string& yaml, const std::string& origin,
                           std::vector<std::string>& unknown_keys) {
  return read(load_yaml(yaml, origin), origin, &unknown_keys);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (std::filesystem::is_directory(path))
    throw ConfigError(path + ": a directory, not a config file");
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot read the config file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), overrides, path);
}

std::string to_yaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Writer w(out);
  Config copy = config;
  visit(w, copy);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> objective_changes(const Config& before, const Config& now) {
  const auto& a = before.diffusion;
  const auto& b = now.diffusion;
  std::vector<std::string> changes;
  const auto compare = [&](const char* key, const auto& x, const auto& y) {
    if (x == y) return;
    const auto name = [](const auto& v) {
      if constexpr (std::is_arithmetic_v<std::decay_t<decltype(v)>>)
        return fmt::format("{}", v);
      else
        return to_string(v);
    };
    changes.push_back(fmt::format("diffusion.{}: {} -> {}", key, name(x), name(y)));
  };
  compare("schedule", a.schedule, b.schedule);
  compare("steps", a.steps, b.steps);
  compare("zero_terminal_snr", a.zero_terminal_snr, b.zero_terminal_snr);
  compare("model_mean_type", a.model_mean_type, b.model_mean_type);
  compare("model_var_type", a.model_var_type, b.model_var_type);
  compare("loss", a.loss, b.loss);
  compare("rescale_timesteps", a.rescale_timesteps, b.rescale_timesteps);
  return changes;
}

std::vector<std::string> input_changes(const Config& before, const Config& now) {
  std::vector<std::string> changes;
  if (before.data.pad_to != now.data.pad_to)
    changes.push_back(fmt::format("data.pad_to: {} -> {}", before.data.pad_to, now.data.pad_to));
  else if (before.model.image_size != now.model.image_size && now.model.image_size != 0)
    changes.push_back(
        fmt::format("model.image_size: {} -> {}", before.model.image_size, now.model.image_size));
  return changes;
}

void validate(const Config& c) {
  check(c.seed >= 0, "seed", c.seed, "must be >= 0");

  check(!c.data.train.empty(), "data.train", "''", "must name a training manifest.json");
  check(c.data.pad_to >= 0, "data.pad_to", c.data.pad_to, "must be >= 0");
  check(c.data.prefetch >= 1, "data.prefetch", c.data.prefetch, "must be >= 1");

  const auto& m = c.model;
  check(m.image_size >= 0, "model.image_size", m.image_size, "must be >= 0 (0 = from the data)");
  check(m.in_channels >= 0, "model.in_channels", m.in_channels, "must be >= 0 (0 = from the data)");
  check(m.num_classes >= 0, "model.num_classes", m.num_classes, "must be >= 0 (0 = from the data)");
  check(m.model_channels > 0, "model.model_channels", m.model_channels, "must be > 0");
  check(!m.channel_mult.empty(), "model.channel_mult", "[]", "must list at least one level");
  for (const double mult : m.channel_mult) {
    check(mult > 0, "model.channel_mult", fmt::format("[{}]", fmt::join(m.channel_mult, ", ")),
          "must hold positive multipliers");
    const double channels = static_cast<double>(m.model_channels) * mult;
    const std::string product = fmt::format("x channel_mult {} = {} channels", mult, channels);
    check(channels == std::floor(channels) && channels < 1e15, "model.model_channels",
          m.model_channels, product + " is not a whole number of channels");
    check(static_cast<int64_t>(channels) % 32 == 0, "model.model_channels", m.model_channels,
          product + " is not divisible by the 32 GroupNorm groups");
  }
  check(m.low_res_size >= 0, "model.low_res_size", m.low_res_size,
        "must be >= 0 (0 = not an upsampler)");
  if (m.low_res_size > 0 && c.data.pad_to > 0)
    throw ConfigError(
        "config key 'model.low_res_size' = " + std::to_string(m.low_res_size) +
        " with data.pad_to: an upsampler works on its images as stored (set data.pad_to: 0)");
  if (m.low_res_noise && m.low_res_size == 0)
    throw ConfigError(
        "config key 'model.low_res_noise' = true needs an upsampler: set model.low_res_size");
  check(m.num_res_blocks >= 1, "model.num_res_blocks", m.num_res_blocks, "must be >= 1");
  check(m.dropout >= 0 && m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)");
  check(m.num_heads >= 1 || m.num_head_channels > 0, "model.num_heads", m.num_heads,
        "must be >= 1 (or set num_head_channels)");

  const auto& d = c.diffusion;
  try {
    diffusion::get_named_beta_schedule(d.schedule, d.steps);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(std::string("config key 'diffusion.steps': ") + e.what());
  }
  if (d.loss == Loss::hybrid && !diffusion::is_learned(d.model_var_type))
    throw ConfigError(
        "config key 'diffusion.loss' = 'hybrid' needs a learned variance: set "
        "diffusion.model_var_type to learned_range or learned (it is '" +
        diffusion::to_string(d.model_var_type) + "')");
  if (d.loss == Loss::simple && diffusion::is_learned(d.model_var_type))
    throw ConfigError(
        "config key 'diffusion.loss' = 'simple' trains no variance: use a fixed "
        "diffusion.model_var_type (fixed_small, fixed_large) or the hybrid loss");
  check(d.vlb_weight > 0, "diffusion.vlb_weight", d.vlb_weight, "must be > 0");
  check(d.min_snr_gamma > 0 && std::isfinite(d.min_snr_gamma), "diffusion.min_snr_gamma",
        d.min_snr_gamma, "must be a finite number > 0");
  check(std::isfinite(d.sigmoid_bias), "diffusion.sigmoid_bias", d.sigmoid_bias, "must be finite");
  if (d.weighting != diffusion::SimpleWeighting::none &&
      (d.loss == Loss::vlb || d.loss == Loss::vlb_unscaled))
    throw ConfigError("config key 'diffusion.weighting' = '" + diffusion::to_string(d.weighting) +
                      "' weights the mse term, which diffusion.loss = '" + to_string(d.loss) +
                      "' does not have; use 'none', or the hybrid or simple loss");
  try {  // the diffusion library's rules for target, weighting and schedule, stated once there
    diffusion::check_objective(d.model_mean_type, d.weighting, d.zero_terminal_snr,
                               d.min_snr_gamma);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(
        fmt::format("config keys 'diffusion.model_mean_type' = '{}', 'diffusion.weighting' = '{}', "
                    "'diffusion.zero_terminal_snr' = {}: {}",
                    diffusion::to_string(d.model_mean_type), diffusion::to_string(d.weighting),
                    d.zero_terminal_snr, e.what()));
  }
  check(std::isfinite(d.logit_normal_mean), "diffusion.logit_normal_mean", d.logit_normal_mean,
        "must be finite");
  check(d.logit_normal_std > 0 && std::isfinite(d.logit_normal_std), "diffusion.logit_normal_std",
        d.logit_normal_std, "must be a finite number > 0");

  const auto& t = c.training;
  check(t.batch_size >= 1, "training.batch_size", t.batch_size, "must be >= 1");
  check(t.microbatch >= 0, "training.microbatch", t.microbatch, "must be >= 0 (0 = whole batch)");
  check(t.lr > 0, "training.lr", t.lr, "must be > 0");
  check(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, "must be >= 0");
  check(t.warmup_steps >= 0, "training.warmup_steps", t.warmup_steps, "must be >= 0");
  check(t.lr_anneal_steps >= 0, "training.lr_anneal_steps", t.lr_anneal_steps, "must be >= 0");
  check(t.grad_clip >= 0, "training.grad_clip", t.grad_clip, "must be >= 0 (0 = off)");
  check(t.p_uncond >= 0 && t.p_uncond < 1, "training.p_uncond", t.p_uncond,
        "must be in [0, 1) (0 = no classifier-free guidance)");
  if (t.p_uncond > 0 && !c.data.class_conditional)
    throw ConfigError(fmt::format(
        "config key 'training.p_uncond' = {} trains classifier-free guidance, which needs "
        "class labels: set data.class_conditional to true",
        t.p_uncond));
  check(t.low_res_noise_max >= 0 && t.low_res_noise_max <= 1, "training.low_res_noise_max",
        t.low_res_noise_max, "must be in [0, 1], a fraction of the diffusion's timesteps");
  check(t.max_steps >= 0, "training.max_steps", t.max_steps, "must be >= 0 (0 = no limit)");
  check(t.max_time >= 0, "training.max_time", t.max_time, "must be >= 0 seconds (0 = no limit)");
  for (double r : t.ema_rates)
    check(r > 0 && r < 1, "training.ema_rates", r, "must be in (0, 1)");
  check(t.loss_scale_init > 0, "training.loss_scale_init", t.loss_scale_init, "must be > 0");
  check(t.loss_scale_growth_interval >= 1, "training.loss_scale_growth_interval",
        t.loss_scale_growth_interval, "must be >= 1");
  check(t.loss_scale_min > 0, "training.loss_scale_min", t.loss_scale_min, "must be > 0");
  check(t.max_bad_steps >= 1, "training.max_bad_steps", t.max_bad_steps, "must be >= 1");
  check(t.checkpoint_every >= 1, "training.checkpoint_every", t.checkpoint_every, "must be >= 1");
  check(t.keep_checkpoints >= 1, "training.keep_checkpoints", t.keep_checkpoints, "must be >= 1");
  check(t.threads >= 0, "training.threads", t.threads, "must be >= 0 (0 = LibTorch's default)");
  check(t.watchdog_timeout > 0, "training.watchdog_timeout", t.watchdog_timeout,
        "must be > 0 seconds");
  check(t.bucket_mb > 0, "training.bucket_mb", t.bucket_mb, "must be > 0");
  check(t.check_replicas_every >= 0, "training.check_replicas_every", t.check_replicas_every,
        "must be >= 0 (0 = off)");
  for (std::size_t i = 0; i < t.phema.sigma_rels.size(); ++i) {
    const double s = t.phema.sigma_rels[i];
    check(s > 0 && s < phema::kMaxSigmaRel, "training.phema.sigma_rels", s,
          "must be in (0, 0.2887): wider averages have no power-function profile");
    check(std::count(t.phema.sigma_rels.begin(), t.phema.sigma_rels.begin() + i, s) == 0,
          "training.phema.sigma_rels", s, "is listed twice");
  }
  check(t.phema.snapshot_every >= 1, "training.phema.snapshot_every", t.phema.snapshot_every,
        "must be >= 1");

  const auto& l = c.logging;
  check(!l.run_dir.empty(), "logging.run_dir", "''", "must name a directory");
  check(l.log_every >= 1, "logging.log_every", l.log_every, "must be >= 1");
  check(l.timestep_stats_every >= 0, "logging.timestep_stats_every", l.timestep_stats_every,
        "must be >= 0 (0 = off)");
  check(l.timestep_buckets >= 1 && l.timestep_buckets <= d.steps, "logging.timestep_buckets",
        l.timestep_buckets, "must be in [1, diffusion.steps]");
  check(l.bpd_every >= 0, "logging.bpd_every", l.bpd_every, "must be >= 0 (0 = off)");
  if (l.bpd_every > 0 && c.data.validation.empty())
    throw ConfigError(
        "config key 'logging.bpd_every' = " + std::to_string(l.bpd_every) +
        " estimates bits/dim on held-out images: set data.validation to their manifest.json");
  check(l.bpd_batch >= 1, "logging.bpd_batch", l.bpd_batch, "must be >= 1");
  check(l.bpd_timesteps >= 1 && l.bpd_timesteps <= d.steps, "logging.bpd_timesteps",
        l.bpd_timesteps, "must be in [1, diffusion.steps]");
  check(l.sample_every >= 0, "logging.sample_every", l.sample_every, "must be >= 0 (0 = off)");
  check(l.sample_num >= 1, "logging.sample_num", l.sample_num, "must be >= 1");
  check(l.sample_steps >= 2 && l.sample_steps <= d.steps, "logging.sample_steps", l.sample_steps,
        "must be in [2, diffusion.steps]");
}

void validate_for_world(const Config& c, int world_size) {
  const int64_t B = c.training.batch_size;
  if (B % world_size != 0)
    throw ConfigError("config key 'training.batch_size' = " + std::to_string(B) +
                      " does not divide into " + std::to_string(world_size) + " ranks");
  const int64_t per_rank = B / world_size, micro = c.training.microbatch;
  if (micro > 0 && per_rank % micro != 0)
    throw ConfigError("config key 'training.microbatch' = " + std::to_string(micro) +
                      " does not divide the per-rank batch of " + std::to_string(per_rank) +
                      " (training.batch_size " + std::to_string(B) + " / " +
                      std::to_string(world_size) + " ranks)");
  const int64_t bpd_batch = c.logging.bpd_batch;
  if (c.logging.bpd_every > 0 && bpd_batch % world_size != 0)
    throw ConfigError("config key 'logging.bpd_batch' = " + std::to_string(bpd_batch) +
                      " does not divide into " + std::to_string(world_size) + " ranks");
}

}  // namespace difftrain::train
