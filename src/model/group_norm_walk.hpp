// How the fused GroupNorm's kernels (group_norm_kernels.cu) map threads to elements: plain
// functions for the host and the device alike, so that tests/model checks the mapping on the CPU
// (FusedGroupNorm.KernelThreadsWalkEachGroupOnce).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define DIFFTRAIN_HOST_DEVICE __host__ __device__
#else
#define DIFFTRAIN_HOST_DEVICE
#endif

namespace difftrain::model::kernels {

enum class Layout { nchw, nhwc };

struct GroupNormShape {
  int64_t n = 0, c = 0, hw = 0, groups = 0;
  Layout layout = Layout::nchw;
};

// Threads of a block that walks one group (n, g), and so the most channels a group may have:
// each of its first rows * Cg threads keeps to one channel and takes every rows-th position, so
// that per-channel sums stay in registers.
constexpr int kGroupThreads = 256;
constexpr int64_t kMaxChannelsPerGroup = kGroupThreads;

struct GroupWalk {
  int64_t first = 0;     // the offset of this thread's channel at position 0
  int64_t p_stride = 0;  // between positions
  int channel = -1;      // within the group; -1: this thread is idle
  int row = 0, rows = 0;
};

// Neighbouring threads read neighbouring addresses: neighbouring channels in NHWC, neighbouring
// positions in NCHW.
DIFFTRAIN_HOST_DEVICE inline GroupWalk group_walk(const GroupNormShape& s, int64_t n, int64_t g,
                                                  int thread) {
  const int cg = static_cast<int>(s.c / s.groups);
  GroupWalk w;
  w.rows = kGroupThreads / cg;
  int64_t c_stride;
  if (s.layout == Layout::nhwc) {
    c_stride = 1;
    w.p_stride = s.c;
    w.channel = thread % cg;
    w.row = thread / cg;
  } else {
    c_stride = s.hw;
    w.p_stride = 1;
    w.channel = thread / w.rows;
    w.row = thread % w.rows;
  }
  if (thread >= w.rows * cg) w.channel = -1;
  const int64_t group_start =
      s.layout == Layout::nhwc ? n * s.hw * s.c + g * cg : (n * s.c + g * cg) * s.hw;
  w.first = group_start + w.channel * c_stride;
  return w;
}

// The thread that walks channel ch (within the group) at row r.
DIFFTRAIN_HOST_DEVICE inline int walker(const GroupNormShape& s, int ch, int r) {
  const int cg = static_cast<int>(s.c / s.groups);
  return s.layout == Layout::nhwc ? r * cg + ch : ch * (kGroupThreads / cg) + r;
}

// Element i's (n, c) and (n, g) indices, for the elementwise kernels.
template <typename Index>
DIFFTRAIN_HOST_DEVICE inline void locate(Index i, const GroupNormShape& s, Index& nc, Index& ng) {
  const Index c_count = static_cast<Index>(s.c), hw = static_cast<Index>(s.hw);
  const Index n = i / (hw * c_count);
  const Index c = s.layout == Layout::nhwc ? i % c_count : (i / hw) % c_count;
  nc = n * c_count + c;
  ng = n * static_cast<Index>(s.groups) + c / (c_count / static_cast<Index>(s.groups));
}

}  // namespace difftrain::model::kernels
