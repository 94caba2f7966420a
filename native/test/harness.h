/*
 * Shared by the native test programs: TAP-like output ("ok - ..." / "not ok -
 * ..." and a final "N passed, N failed"), the build directory, and target
 * processes driven over their stdin/stdout.
 */
#ifndef NIGHTFUSE_TEST_HARNESS_H_
#define NIGHTFUSE_TEST_HARNESS_H_
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passes, failures;
static char dir[1024];

#define CHECK(cond, ...)       \
  do {                         \
    if (cond) {                \
      passes++;                \
      printf("ok - ");         \
    } else {                   \
      failures++;              \
      printf("not ok - ");     \
    }                          \
    printf(__VA_ARGS__);       \
    printf("\n");              \
    fflush(stdout);            \
  } while (0)

static __attribute__((unused)) int finish(void) {
  printf("%d passed, %d failed\n", passes, failures);
  return failures || passes == 0 ? 1 : 0;
}

static __attribute__((unused)) double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The build directory: argv[1] when it is one (has libprobe.so), else the one
 * this binary was built into (<build>/test/<name>): a sanitizer build's tests
 * must load that build's libraries, never the plain ones. */
static __attribute__((unused)) void find_build_dir(int argc, char** argv) {
  if (argc > 1 && argv[1][0] != '-') {
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/libprobe.so", argv[1]);
    if (access(probe, R_OK) == 0) {
      snprintf(dir, sizeof dir, "%s", argv[1]);
      return;
    }
  }
  char self[1024];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  self[n > 0 ? n : 0] = '\0';
  for (int i = 0; i < 2; i++) {
    char* slash = strrchr(self, '/');
    if (slash) *slash = '\0';
  }
  snprintf(dir, sizeof dir, "%s", self);
}

typedef struct {
  pid_t pid;
  int to;   /* target stdin */
  int from; /* target stdout */
  char buf[8192];
  size_t have;
} target;

/* Starts <build>/targets/<name> with up to 3 arguments; extra_fd (or -1) becomes its fd 3. */
static __attribute__((unused)) int start_target_fd(const char* name, const char* a1, const char* a2, const char* a3, int extra_fd, target* t) {
  int in[2], out[2];
  memset(t, 0, sizeof *t);
  if (pipe(in) || pipe(out)) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (extra_fd >= 0) dup2(extra_fd, 3);
    char path[1100];
    snprintf(path, sizeof path, "%s/targets/%s", dir, name);
    execl(path, path, a1, a2, a3, (char*)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  t->pid = pid;
  t->to = in[1];
  t->from = out[0];
  return 0;
}

/* One line from the target (without the newline), waiting up to timeout_ms; -1 on timeout/EOF. */
static __attribute__((unused)) int read_line(target* t, char* line, size_t len, int timeout_ms) {
  double deadline = now_ms() + timeout_ms;
  for (;;) {
    char* nl = memchr(t->buf, '\n', t->have);
    if (nl) {
      size_t n = (size_t)(nl - t->buf);
      size_t k = n < len - 1 ? n : len - 1;
      memcpy(line, t->buf, k);
      line[k] = '\0';
      memmove(t->buf, nl + 1, t->have - n - 1);
      t->have -= n + 1;
      return 0;
    }
    int left = (int)(deadline - now_ms());
    struct pollfd p = {t->from, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) <= 0) return -1;
    ssize_t r = read(t->from, t->buf + t->have, sizeof t->buf - 1 - t->have);
    if (r <= 0) return -1;
    t->have += (size_t)r;
  }
}

static __attribute__((unused)) int start_target(const char* name, const char* a1, target* t) {
  char line[128];
  if (start_target_fd(name, a1, NULL, NULL, -1, t) != 0) return -1;
  return read_line(t, line, sizeof line, 5000) == 0 && strncmp(line, "ready ", 6) == 0 ? 0 : -1;
}

/* Sends a command and returns its one-line answer (within timeout_ms). */
static __attribute__((unused)) int ask(target* t, const char* cmd, char* answer, size_t len, int timeout_ms) {
  char buf[1200];
  int n = snprintf(buf, sizeof buf, "%s\n", cmd);
  if (write(t->to, buf, (size_t)n) != n) return -1;
  return read_line(t, answer, len, timeout_ms);
}

static __attribute__((unused)) int echo_ok(target* t, const char* msg) {
  char answer[300], want[300];
  snprintf(want, sizeof want, "echo %s", msg);
  return ask(t, msg, answer, sizeof answer, 3000) == 0 && strcmp(answer, want) == 0;
}

static __attribute__((unused)) void stop_target(target* t) {
  close(t->to);
  kill(t->pid, SIGKILL);
  waitpid(t->pid, NULL, 0);
  close(t->from);
}

static __attribute__((unused)) int status_field(pid_t pid, pid_t tid, const char* key, char* out, size_t len) {
  char path[96], line[256];
  snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  int rc = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, kl) != 0 || line[kl] != ':') continue;
    char* v = line + kl + 1;
    while (*v == ' ' || *v == '\t') v++;
    v[strcspn(v, "\n")] = '\0';
    size_t n = strlen(v) < len - 1 ? strlen(v) : len - 1; /* values are short */
    memcpy(out, v, n);
    out[n] = '\0';
    rc = 0;
    break;
  }
  fclose(f);
  return rc;
}

static __attribute__((unused)) int tracer_pid(pid_t pid) {
  char v[64];
  return status_field(pid, pid, "TracerPid", v, sizeof v) == 0 ? atoi(v) : -1;
}

static __attribute__((unused)) char state_of(pid_t pid) {
  char v[64];
  return status_field(pid, pid, "State", v, sizeof v) == 0 ? v[0] : '?';
}

/* Threads of pid traced by anyone, and the first such tid (for messages). */
static __attribute__((unused)) int traced_threads(pid_t pid, pid_t* first) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = opendir(path);
  int n = 0;
  struct dirent* e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char v[64];
    pid_t tid = atoi(e->d_name);
    if (status_field(pid, tid, "TracerPid", v, sizeof v) == 0 && atoi(v) != 0) {
      if (n++ == 0 && first) *first = tid;
    }
  }
  if (d) closedir(d);
  return n;
}

/* The scheduler state letter of one thread. */
static __attribute__((unused)) char thread_state_of(pid_t pid, pid_t tid) {
  char v[64];
  return status_field(pid, tid, "State", v, sizeof v) == 0 ? v[0] : '?';
}

/* Entries of a /proc directory (task/, fd/): what a leak test counts. */
static __attribute__((unused)) int count_entries(const char* path) {
  DIR* d = opendir(path);
  int n = 0;
  struct dirent* e;
  while (d && (e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}

static __attribute__((unused)) int file_has(const char* path, const char* want) {
  char buf[128] = "";
  FILE* f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return strcmp(buf, want) == 0;
}

#endif /* NIGHTFUSE_TEST_HARNESS_H_ */
