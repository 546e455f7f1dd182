#include "cli/line_plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "data/png_grid.hpp"

namespace difftrain::cli {
namespace {

using Color = std::array<uint8_t, 3>;
constexpr Color kBlack{0, 0, 0};
constexpr Color kGrid{225, 225, 225};

// 3x5 glyphs, one row per 3 bits, top row first.
constexpr uint16_t glyph(int r0, int r1, int r2, int r3, int r4) {
  return static_cast<uint16_t>(r0 << 12 | r1 << 9 | r2 << 6 | r3 << 3 | r4);
}

uint16_t glyph_of(char c) {
  if (c == 'L') return glyph(0b100, 0b100, 0b100, 0b100, 0b111);  // for "L_t"; others lowercase
  switch (std::tolower(static_cast<unsigned char>(c))) {
    // clang-format off
    case '0': return glyph(0b111, 0b101, 0b101, 0b101, 0b111);
    case '1': return glyph(0b010, 0b110, 0b010, 0b010, 0b111);
    case '2': return glyph(0b111, 0b001, 0b111, 0b100, 0b111);
    case '3': return glyph(0b111, 0b001, 0b111, 0b001, 0b111);
    case '4': return glyph(0b101, 0b101, 0b111, 0b001, 0b001);
    case '5': return glyph(0b111, 0b100, 0b111, 0b001, 0b111);
    case '6': return glyph(0b111, 0b100, 0b111, 0b101, 0b111);
    case '7': return glyph(0b111, 0b001, 0b001, 0b001, 0b001);
    case '8': return glyph(0b111, 0b101, 0b111, 0b101, 0b111);
    case '9': return glyph(0b111, 0b101, 0b111, 0b001, 0b111);
    case '.': return glyph(0b000, 0b000, 0b000, 0b000, 0b010);
    case ',': return glyph(0b000, 0b000, 0b000, 0b010, 0b100);
    case ':': return glyph(0b000, 0b010, 0b000, 0b010, 0b000);
    case '-': return glyph(0b000, 0b000, 0b111, 0b000, 0b000);
    case '+': return glyph(0b000, 0b010, 0b111, 0b010, 0b000);
    case '=': return glyph(0b000, 0b111, 0b000, 0b111, 0b000);
    case '/': return glyph(0b001, 0b001, 0b010, 0b100, 0b100);
    case '_': return glyph(0b000, 0b000, 0b000, 0b000, 0b111);
    case '(': return glyph(0b010, 0b100, 0b100, 0b100, 0b010);
    case ')': return glyph(0b010, 0b001, 0b001, 0b001, 0b010);
    case 'a': return glyph(0b000, 0b011, 0b101, 0b101, 0b011);
    case 'b': return glyph(0b100, 0b110, 0b101, 0b101, 0b110);
    case 'c': return glyph(0b000, 0b011, 0b100, 0b100, 0b011);
    case 'd': return glyph(0b001, 0b011, 0b101, 0b101, 0b011);
    case 'e': return glyph(0b000, 0b010, 0b111, 0b100, 0b011);
    case 'f': return glyph(0b011, 0b100, 0b110, 0b100, 0b100);
    case 'g': return glyph(0b011, 0b101, 0b111, 0b001, 0b110);
    case 'h': return glyph(0b100, 0b110, 0b101, 0b101, 0b101);
    case 'i': return glyph(0b010, 0b000, 0b010, 0b010, 0b010);
    case 'j': return glyph(0b001, 0b000, 0b001, 0b101, 0b010);
    case 'k': return glyph(0b100, 0b101, 0b110, 0b110, 0b101);
    case 'l': return glyph(0b110, 0b010, 0b010, 0b010, 0b011);
    case 'm': return glyph(0b000, 0b110, 0b111, 0b101, 0b101);
    case 'n': return glyph(0b000, 0b110, 0b101, 0b101, 0b101);
    case 'o': return glyph(0b000, 0b010, 0b101, 0b101, 0b010);
    case 'p': return glyph(0b000, 0b110, 0b101, 0b110, 0b100);
    case 'q': return glyph(0b000, 0b011, 0b101, 0b011, 0b001);
    case 'r': return glyph(0b000, 0b011, 0b100, 0b100, 0b100);
    case 's': return glyph(0b000, 0b011, 0b110, 0b001, 0b110);
    case 't': return glyph(0b010, 0b111, 0b010, 0b010, 0b001);
    case 'u': return glyph(0b000, 0b101, 0b101, 0b101, 0b011);
    case 'v': return glyph(0b000, 0b101, 0b101, 0b101, 0b010);
    case 'w': return glyph(0b000, 0b101, 0b101, 0b111, 0b111);
    case 'x': return glyph(0b000, 0b101, 0b010, 0b010, 0b101);
    case 'y': return glyph(0b000, 0b101, 0b011, 0b001, 0b110);
    case 'z': return glyph(0b000, 0b111, 0b010, 0b100, 0b111);
    default: return 0;
      // clang-format on
  }
}

class Canvas {
 public:
  Canvas(int64_t w, int64_t h) : w_(w), h_(h), pixels_(static_cast<std::size_t>(w * h * 3), 255) {}

  void set(int64_t x, int64_t y, Color c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    std::copy(c.begin(), c.end(), pixels_.begin() + (y * w_ + x) * 3);
  }
  // Bresenham, with the pixel below each one for a 2 px stroke when thick.
  void line(int64_t x0, int64_t y0, int64_t x1, int64_t y1, Color c, bool thick = false) {
    const int64_t dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int64_t sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int64_t err = dx + dy;
    for (;;) {
      set(x0, y0, c);
      if (thick) set(x0, y0 + 1, c);
      if (x0 == x1 && y0 == y1) break;
      const int64_t e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  static constexpr int64_t kScale = 2;  // font pixels per glyph pixel
  static int64_t text_width(const std::string& s) {
    return static_cast<int64_t>(s.size()) * 4 * kScale;
  }
  static constexpr int64_t kTextHeight = 5 * kScale;
  // Top-left corner at (x, y).
  void text(int64_t x, int64_t y, const std::string& s, Color c) {
    for (const char ch : s) {
      const uint16_t g = glyph_of(ch);
      for (int row = 0; row < 5; ++row)
        for (int col = 0; col < 3; ++col)
          if ((g >> ((4 - row) * 3 + (2 - col))) & 1)
            for (int64_t a = 0; a < kScale; ++a)
              for (int64_t b = 0; b < kScale; ++b)
                set(x + col * kScale + b, y + row * kScale + a, c);
      x += 4 * kScale;
    }
  }
  const uint8_t* data() const { return pixels_.data(); }

 private:
  int64_t w_, h_;
  std::vector<uint8_t> pixels_;
};

// Ticks at 1, 2 or 5 x 10^k covering [lo, hi] with about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step)
    ticks.push_back(std::abs(v) < 1e-12 * step ? 0.0 : v);
  return ticks;
}

}  // namespace

void write_line_plot(const std::string& path, const std::vector<double>& x,
                     const std::vector<PlotSeries>& series, const PlotOptions& o) {
  const auto usable = [&](double v) { return std::isfinite(v) && (!o.log_y || v > 0); };
  const auto ty = [&](double v) { return o.log_y ? std::log10(v) : v; };
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const double v : x)
    x_lo = std::min(x_lo, v), x_hi = std::max(x_hi, v);
  for (const PlotSeries& s : series)
    for (const double v : s.y)
      if (usable(v)) y_lo = std::min(y_lo, ty(v)), y_hi = std::max(y_hi, ty(v));
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1;
  if (!std::isfinite(y_lo)) y_lo = 0, y_hi = 1;
  if (o.log_y) y_lo = std::floor(y_lo), y_hi = std::ceil(y_hi);
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  if (y_hi <= y_lo) y_hi = y_lo + 1;

  // The legend takes a column right of the plot: a stroke and the label of each labelled series.
  constexpr int64_t kStroke = 20, kGap = 8;
  int64_t legend_width = 0;
  for (const PlotSeries& s : series)
    if (!s.label.empty())
      legend_width = std::max(legend_width, kGap + kStroke + kGap + Canvas::text_width(s.label));

  Canvas canvas(o.width, o.height);
  const int64_t left = 90, right = o.width - 20 - legend_width, top = 40, bottom = o.height - 40;
  const auto px = [&](double v) {
    return left + static_cast<int64_t>(std::lround((v - x_lo) / (x_hi - x_lo) * (right - left)));
  };
  const auto py = [&](double v) {
    return bottom - static_cast<int64_t>(std::lround((v - y_lo) / (y_hi - y_lo) * (bottom - top)));
  };

  // Grid and tick labels: decades on a log axis.
  std::vector<double> y_ticks;
  if (o.log_y) {
    const double step = std::max(1.0, std::ceil((y_hi - y_lo) / 8));
    for (double k = y_lo; k <= y_hi + 1e-9; k += step)
      y_ticks.push_back(k);
  } else {
    y_ticks = nice_ticks(y_lo, y_hi, 6);
  }
  for (const double k : y_ticks) {
    const int64_t y = py(k);
    canvas.line(left, y, right, y, kGrid);
    const std::string label = fmt::format("{:g}", o.log_y ? std::pow(10.0, k) : k);
    canvas.text(left - 8 - Canvas::text_width(label), y - Canvas::kTextHeight / 2, label, kBlack);
  }
  for (const double v : nice_ticks(x_lo, x_hi, 8)) {
    const int64_t x_px = px(v);
    canvas.line(x_px, top, x_px, bottom, kGrid);
    const std::string label = fmt::format("{:g}", v);
    canvas.text(x_px - Canvas::text_width(label) / 2, bottom + 8, label, kBlack);
  }
  canvas.line(left, top, left, bottom, kBlack);
  canvas.line(left, bottom, right, bottom, kBlack);
  if (!o.title.empty()) canvas.text(left, top - 12 - Canvas::kTextHeight, o.title, kBlack);

  for (const PlotSeries& s : series) {
    bool have_last = false;
    int64_t last_x = 0, last_y = 0;
    for (std::size_t i = 0; i < x.size() && i < s.y.size(); ++i) {
      if (!usable(s.y[i])) {
        have_last = false;
        continue;
      }
      const int64_t cx = px(x[i]), cy = py(ty(s.y[i]));
      if (have_last)
        canvas.line(last_x, last_y, cx, cy, s.color, /*thick=*/true);
      else
        canvas.set(cx, cy, s.color);
      have_last = true, last_x = cx, last_y = cy;
    }
  }
  int64_t legend_y = top;
  for (const PlotSeries& s : series) {
    if (s.label.empty()) continue;
    const int64_t x = right + kGap, y = legend_y + Canvas::kTextHeight / 2;
    canvas.line(x, y, x + kStroke, y, s.color, /*thick=*/true);
    canvas.text(x + kStroke + kGap, legend_y, s.label, kBlack);
    legend_y += 2 * Canvas::kTextHeight;
  }
  data::write_png(path, canvas.data(), o.height, o.width, 3);
}

}  // namespace difftrain::cli
