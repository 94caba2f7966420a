/* Proves that sanitizer reports fail the run: a signed overflow that
 * UndefinedBehaviorSanitizer must turn into a fatal error under `make asan`
 * (test/native.test.ts expects this program to die there). */
#include <limits.h>
#include <stdio.h>

int main(void) {
  volatile int big = INT_MAX;
  int wrapped = big + 1; /* undefined behaviour, on purpose */
  printf("canary survived: %d\n", wrapped);
  return 0;
}
