/* Test library for the injector. probe_entry(path) writes "pid=<pid>" to path.
 * probe_exit() ends the process (the "target exits during injection" case).
 * probe_fail() returns 7. probe_crash() dereferences NULL. probe_cpus(path)
 * writes "cpus=<n>": how many CPUs the thread it runs on may use. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int probe_loaded = 1;

int probe_entry(const char* path) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return 1;
  char buf[64];
  int n = snprintf(buf, sizeof buf, "pid=%d", (int)getpid());
  int rc = write(fd, buf, (size_t)n) == n ? 0 : 2;
  close(fd);
  return rc;
}
int probe_exit(const char* arg) {
  (void)arg;
  _exit(42);
}
int probe_fail(const char* arg) {
  (void)arg;
  return 7;
}
/* A real fault, not a sanitizer report: the injector must see the SIGSEGV. */
__attribute__((no_sanitize("undefined"))) int probe_crash(const char* arg) {
  (void)arg;
  volatile int* p = NULL;
  return *p;
}

/* probe_noop() returns 0: an entry that only proves the call came back. */
int probe_noop(const char* arg) {
  (void)arg;
  return 0;
}

int probe_cpus(const char* path) {
  cpu_set_t s;
  if (sched_getaffinity(0, sizeof s, &s) != 0) return 3;
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return 1;
  char buf[32];
  int n = snprintf(buf, sizeof buf, "cpus=%d", CPU_COUNT(&s));
  int rc = write(fd, buf, (size_t)n) == n ? 0 : 2;
  close(fd);
  return rc;
}
