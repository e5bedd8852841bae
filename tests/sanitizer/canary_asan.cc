// ASan canary: writes one int past a heap array. In an AddressSanitizer build this must die
// with "AddressSanitizer: heap-buffer-overflow"; without ASan it exits 0 and its test fails.
#include <cstdio>

int main(int argc, char**) {
  volatile int n = 7 + argc;  // 8, but not a constant the compiler can reason about
  int* p = new int[static_cast<unsigned>(n)];
  p[n] = 42;  // one past the end
  std::printf("canary survived: %d\n", p[0]);
  delete[] p;
  return 0;
}
