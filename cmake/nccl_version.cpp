// Prints the NCCL library's version as MAJOR.MINOR.PATCH (configure-time check).
#include <nccl.h>

#include <cstdio>

int main() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return 1;
  // NCCL >= 2.9 encodes MAJOR*10000 + MINOR*100 + PATCH.
  std::printf("%d.%d.%d\n", v / 10000, (v % 10000) / 100, v % 100);
  return 0;
}
