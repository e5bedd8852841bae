// UBSan canary: a signed integer overflow. In an UndefinedBehaviorSanitizer build made with
// -fno-sanitize-recover this prints "runtime error: signed integer overflow" and aborts before
// the "survived" line; a build without UBSan, or with recovery on, fails the canary's test.
#include <climits>
#include <cstdio>

int main(int argc, char**) {
  volatile int x = INT_MAX;
  const int y = x + argc;  // INT_MAX + 1
  std::printf("canary survived: %d\n", y);
  return 0;
}
