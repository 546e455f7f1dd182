// A minimal line plot rendered to PNG without a plotting library: axes, grid, numeric tick
// labels in a built-in 3x5 pixel font, one polyline per series and, when series are labelled, a
// legend right of the plot. Enough to eyeball a per-t curve such as L_t of the variational bound,
// or a few runs' learning curves.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::cli {

struct PlotSeries {
  std::vector<double> y;  // one value per x; non-finite (and, on a log axis, non-positive)
                          // values leave a gap
  std::array<uint8_t, 3> color{31, 119, 180};
  std::string label{};  // its legend entry, drawn right of the plot; "" = none
};

struct PlotOptions {
  bool log_y = false;
  int64_t width = 800;
  int64_t height = 480;
  std::string title;  // drawn top left; the font has digits, a few symbols, lowercase letters
                      // and 'L' (other capitals are drawn lowercase, anything else blank)
};

// Throws data::Error naming the file when it cannot be written.
void write_line_plot(const std::string& path, const std::vector<double>& x,
                     const std::vector<PlotSeries>& series, const PlotOptions& options = {});

}  // namespace difftrain::cli
