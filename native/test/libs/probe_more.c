/* More entries for the injector's hazard tests (built into libprobe.so too).
 *   probe_sleep("ms")   sleeps: keeps the injection open while a test sends signals
 *   probe_thread(path)  starts a thread that writes "thread" to path, and joins it
 *                       (a thread created during the injection)
 *   probe_log(arg)      writes "PROBE\n" to the target's FILE* target_log */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int probe_sleep(const char* arg) {
  long ms = atol(arg);
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
  return 0;
}

static void* writer(void* p) {
  int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return (void*)1;
  long bad = write(fd, "thread", 6) != 6;
  close(fd);
  return (void*)bad;
}

int probe_thread(const char* path) {
  pthread_t t;
  void* r = (void*)1;
  if (pthread_create(&t, NULL, writer, (void*)path) != 0) return 1;
  pthread_join(t, &r);
  return r != NULL;
}

int probe_log(const char* arg) {
  (void)arg;
  FILE** log = dlsym(RTLD_DEFAULT, "target_log");
  if (!log || !*log) return 1;
  fputs("PROBE\n", *log);
  return fflush(*log) == 0 ? 0 : 2;
}
