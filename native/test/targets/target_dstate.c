/* A thread that keeps entering uninterruptible sleep: it vforks a child that
 * sleeps argv[1] ms (300) before _exit, and the kernel holds a vfork parent in
 * D state until then. The main thread reads commands; "count" -> vforks done. */
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include "commands.h"

static atomic_long vforks;
static long sleep_ms = 300;

static void* vforker(void* a) {
  (void)a;
  for (;;) {
    pid_t c = vfork();
    if (c == 0) {
      struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
      syscall(SYS_nanosleep, &ts, NULL); /* the raw call: a vfork child may not touch libc state */
      _exit(0);
    }
    if (c > 0) waitpid(c, NULL, 0);
    atomic_fetch_add(&vforks, 1);
  }
  return NULL;
}

static int on_command(const char* line) {
  if (strcmp(line, "count") != 0) return 0;
  say("count %ld", atomic_load(&vforks));
  return 1;
}

int main(int argc, char** argv) {
  if (argc > 1) sleep_ms = atol(argv[1]);
  pthread_t t;
  pthread_create(&t, NULL, vforker, NULL);
  announce_ready();
  command_loop(on_command);
  return 0;
}
