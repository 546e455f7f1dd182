// `difftrain plot`: columns of a CSV file (a header row, then numbers) drawn as lines against one
// of them, for the tables the launchers and benchmarks write (launch/scaling.sh).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <array>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "cli/commands.hpp"
#include "cli/line_plot.hpp"

namespace difftrain::cli {
namespace {

struct Options {
  std::string csv, x, out, title;
  std::vector<std::string> y;
  bool log_y = false;
  int64_t width = 800, height = 480;
};

struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> values;  // [column][row]
};

std::vector<std::string> split(std::string line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF line ends (Python's csv)
  std::vector<std::string> cells;
  std::stringstream s(line);
  for (std::string cell; std::getline(s, cell, ',');)
    cells.push_back(cell);
  return cells;
}

Table read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument(path + ": cannot read the CSV file");
  Table t;
  std::string line;
  if (!std::getline(in, line)) throw std::invalid_argument(path + ": empty (no header row)");
  t.columns = split(line);
  t.values.resize(t.columns.size());
  for (int row = 2; std::getline(in, line); ++row) {
    if (line.empty()) continue;
    const auto cells = split(line);
    if (cells.size() != t.columns.size())
      throw std::invalid_argument(path + ": line " + std::to_string(row) + " has " +
                                  std::to_string(cells.size()) + " cells, the header " +
                                  std::to_string(t.columns.size()));
    for (std::size_t c = 0; c < cells.size(); ++c) {
      try {
        t.values[c].push_back(std::stod(cells[c]));
      } catch (const std::exception&) {
        throw std::invalid_argument(path + ": line " + std::to_string(row) + ", column '" +
                                    t.columns[c] + "': '" + cells[c] + "' is not a number");
      }
    }
  }
  return t;
}

const std::vector<double>& column(const Table& t, const std::string& name,
                                  const std::string& path) {
  for (std::size_t c = 0; c < t.columns.size(); ++c)
    if (t.columns[c] == name) return t.values[c];
  std::string valid;
  for (const auto& c : t.columns)
    valid += (valid.empty() ? "" : ", ") + c;
  throw std::invalid_argument(path + ": no column '" + name + "' (columns: " + valid + ")");
}

int run(const Options& o) {
  const Table t = read_csv(o.csv);
  // matplotlib's "tab10": ten runs are told apart by colour alone (launch/reproduce.sh's report
  // plots six runs and their repeats with other seeds).
  static constexpr std::array<std::array<uint8_t, 3>, 10> kColors{{{31, 119, 180},
                                                                   {255, 127, 14},
                                                                   {44, 160, 44},
                                                                   {214, 39, 40},
                                                                   {148, 103, 189},
                                                                   {140, 86, 75},
                                                                   {227, 119, 194},
                                                                   {127, 127, 127},
                                                                   {188, 189, 34},
                                                                   {23, 190, 207}}};
  std::vector<PlotSeries> series;
  // Several lines need a legend to be told apart; one is named by the title.
  const bool legend = o.y.size() > 1;
  for (const auto& name : o.y)
    series.push_back(
        {column(t, name, o.csv), kColors[series.size() % kColors.size()], legend ? name : ""});
  PlotOptions po;
  po.log_y = o.log_y;
  po.title = o.title;
  po.width = o.width;
  po.height = o.height;
  write_line_plot(o.out, column(t, o.x, o.csv), series, po);
  spdlog::info("wrote {}", o.out);
  return kOk;
}

}  // namespace

void add_plot_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("plot", "Draw CSV columns as lines against another (PNG)");
  cmd->add_option("--csv", o->csv, "CSV file: a header row, then numbers")->required();
  cmd->add_option("--x", o->x, "Column of the x axis")->required();
  cmd->add_option("--y", o->y,
                  "Column(s) to draw, in the colors blue, orange, green, red, purple, brown, "
                  "pink, gray, olive, cyan (then again from blue); several are named in a legend")
      ->required();
  cmd->add_option("--title", o->title, "Title (lowercase letters, digits, a few symbols)");
  cmd->add_flag("--log-y", o->log_y, "Logarithmic y axis");
  cmd->add_option("--width", o->width, "Image width in pixels")
      ->default_val(800)
      ->check(CLI::Range(400, 4000));
  cmd->add_option("--height", o->height, "Image height in pixels")
      ->default_val(480)
      ->check(CLI::Range(200, 4000));
  cmd->add_option("--out", o->out, "PNG file to write")->required();
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

}  // namespace difftrain::cli
