/* Shared by the injector's test targets: an echo loop on stdin/stdout that the
 * tests use to check a target still works after an injection. */
#ifndef TARGET_COMMON_H_
#define TARGET_COMMON_H_
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void announce_ready(void) {
  printf("ready %d\n", (int)getpid());
  fflush(stdout);
}

/* Blocks in read(2) on stdin; answers "echo <line>"; returns on EOF. */
__attribute__((unused)) static void echo_loop(void) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf - 1);
    if (n <= 0) return;
    buf[n] = '\0';
    char* nl = strchr(buf, '\n');
    if (nl) *nl = '\0';
    printf("echo %s\n", buf);
    fflush(stdout);
  }
}
#endif
