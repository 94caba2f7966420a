/* The command loop of the injector's hazard targets: one line in on stdin, one
 * line out on stdout, read with read(2) (so the thread waits in an idle
 * system call). "dlopen <path>" is built in: a loader thread of its own calls
 * dlopen (the loader lock is recursive: a thread that holds it could not
 * tell), and the answer is "dlopen hung" if it does not return in 2 s.
 * Anything else goes to the target's own handler, then falls back to
 * "echo <line>". */
#ifndef TARGET_COMMANDS_H_
#define TARGET_COMMANDS_H_
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int read_errors; /* read(2) failures other than EOF: a broken restart */

static void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  for (int off = 0; off < n;) {
    ssize_t w = write(1, buf + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += (int)w;
  }
}

static int loader_req[2] = {-1, -1}, loader_ans[2] = {-1, -1};

static void* loader_thread(void* a) {
  (void)a;
  char path[4096];
  for (;;) {
    ssize_t n = read(loader_req[0], path, sizeof path - 1);
    if (n <= 0) return NULL;
    path[n] = '\0';
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    char ans[600];
    int k = h ? snprintf(ans, sizeof ans, "dlopen ok") : snprintf(ans, sizeof ans, "dlopen failed: %s", dlerror());
    if (write(loader_ans[1], ans, (size_t)k) != k) return NULL;
  }
}

static void do_dlopen(const char* path) {
  if (loader_req[0] < 0) {
    pthread_t t;
    if (pipe(loader_req) || pipe(loader_ans) || pthread_create(&t, NULL, loader_thread, NULL)) {
      say("dlopen failed: cannot start the loader thread");
      return;
    }
  }
  if (write(loader_req[1], path, strlen(path)) < 0) return;
  struct pollfd p = {loader_ans[0], POLLIN, 0};
  char ans[600];
  ssize_t n;
  if (poll(&p, 1, 2000) != 1 || (n = read(loader_ans[0], ans, sizeof ans - 1)) <= 0) {
    say("dlopen hung (no answer in 2 s: the loader lock is held)");
    return;
  }
  ans[n] = '\0';
  say("%s", ans);
}

static void command_loop(int (*handler)(const char* line)) {
  char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t n = read(0, buf + have, sizeof buf - 1 - have);
    if (n < 0) {
      read_errors++;
      continue;
    }
    if (n == 0) return;
    have += (size_t)n;
    char* nl;
    while ((nl = memchr(buf, '\n', have))) {
      *nl = '\0';
      if (strncmp(buf, "dlopen ", 7) == 0) {
        do_dlopen(buf + 7);
      } else if (!handler || !handler(buf)) {
        say("echo %s", buf);
      }
      size_t used = (size_t)(nl - buf) + 1;
      memmove(buf, nl + 1, have - used);
      have -= used;
    }
  }
}

static void announce_ready(void) { say("ready %d", (int)getpid()); }
#endif
