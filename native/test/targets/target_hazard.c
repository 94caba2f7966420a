/* Targets whose other threads hold libc locks while the injector works.
 *   mallinfo          a thread loops mallinfo2() with one malloc arena: it
 *                     holds the arena lock most of the time
 *   ctorwait <lib> [ms]  a thread loops dlopen/dlclose of <lib>, whose
 *                     constructor waits for target_mu, which another thread
 *                     holds ms (20) at a time: the loader's lock is held while
 *                     waiting in futex
 *   ctorwait-spin <lib>  the same, but main spins in user code (never idle)
 *                     and commands come on a thread of their own
 *   ctorhold <lib>    the loader lock stays held (a thread's dlopen of <lib>
 *                     waits in the constructor for target_mu, held) until the
 *                     command "release"; main ticks in nanosleep, "count"
 *                     says how often; commands come on a thread of their own
 *   busy              main spins in user code; a thread loops malloc(2 MiB)
 *                     (mmap under the arena lock), another writes lines to fd 3
 *                     through stdio (write under the FILE lock); a last thread
 *                     reads the commands (the one idle wait in the process)
 * Commands: "dlopen <path>", "count" -> "count <progress of the busy threads>". */
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include "commands.h"

__attribute__((visibility("default"))) pthread_mutex_t target_mu = PTHREAD_MUTEX_INITIALIZER;
__attribute__((visibility("default"))) FILE* target_log;
static atomic_long progress;
static const char* ctor_lib;
static long hold_ms = 20;

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void* mallinfo_loop(void* a) {
  (void)a;
  for (;;) {
    struct mallinfo2 mi = mallinfo2();
    if (mi.arena) atomic_fetch_add(&progress, 1);
  }
  return NULL;
}

static void* holder(void* a) {
  (void)a;
  for (;;) {
    pthread_mutex_lock(&target_mu);
    sleep_ms(hold_ms);
    pthread_mutex_unlock(&target_mu);
    sleep_ms(1);
  }
  return NULL;
}

static void* ctor_loader(void* a) {
  (void)a;
  for (;;) {
    void* h = dlopen(ctor_lib, RTLD_NOW | RTLD_LOCAL);
    if (h) dlclose(h);
    atomic_fetch_add(&progress, 1);
    sleep_ms(30); /* else it takes the loader lock back at once, and others starve */
  }
  return NULL;
}

static pthread_mutex_t release_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t release_cv = PTHREAD_COND_INITIALIZER;
static int released;

static void* hold_until_released(void* a) {
  (void)a;
  pthread_mutex_lock(&release_mu);
  while (!released) pthread_cond_wait(&release_cv, &release_mu);
  pthread_mutex_unlock(&release_mu);
  pthread_mutex_unlock(&target_mu);
  return NULL;
}

static void* load_once(void* a) {
  (void)a;
  void* h = dlopen(ctor_lib, RTLD_NOW | RTLD_LOCAL);
  if (h) dlclose(h);
  return NULL;
}

static void* mapper(void* a) {
  (void)a;
  for (;;) {
    void* p = malloc(2 << 20);
    free(p);
    atomic_fetch_add(&progress, 1);
  }
  return NULL;
}

static void* logger(void* a) {
  (void)a;
  char pad[80];
  memset(pad, 'w', sizeof pad - 1);
  pad[sizeof pad - 1] = '\0';
  for (long i = 0;; i++) {
    fprintf(target_log, "W:%08ld:%s\n", i, pad);
    atomic_fetch_add(&progress, 1);
  }
  return NULL;
}

static int on_command(const char* line) {
  if (strcmp(line, "release") == 0) {
    pthread_mutex_lock(&release_mu);
    released = 1;
    pthread_cond_broadcast(&release_cv);
    pthread_mutex_unlock(&release_mu);
    say("released");
    return 1;
  }
  if (strcmp(line, "count") != 0) return 0;
  say("count %ld", atomic_load(&progress));
  return 1;
}

static void* commands(void* a) {
  (void)a;
  announce_ready();
  command_loop(on_command);
  exit(0);
}

static void start(void* (*fn)(void*)) {
  pthread_t t;
  pthread_create(&t, NULL, fn, NULL);
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, 128 * 1024); /* fixed: every 2 MiB block is mmap'ed */
  if (strcmp(mode, "mallinfo") == 0) {
    start(mallinfo_loop);
  } else if (strcmp(mode, "ctorwait") == 0 && argc > 2) {
    ctor_lib = argv[2];
    if (argc > 3) hold_ms = atol(argv[3]);
    start(holder);
    start(ctor_loader);
  } else if (strcmp(mode, "ctorwait-spin") == 0 && argc > 2) {
    /* ctorwait with a main thread that never waits: the injection has to borrow another thread */
    ctor_lib = argv[2];
    start(holder);
    start(ctor_loader);
    start(commands);
    volatile unsigned long spin = 0;
    for (;;) spin++;
  } else if (strcmp(mode, "ctorhold") == 0 && argc > 2) {
    ctor_lib = argv[2];
    pthread_mutex_lock(&target_mu); /* handed to the holder thread below: released on "release" */
    start(hold_until_released);
    start(load_once);
    sleep_ms(50); /* its dlopen is in the constructor now, holding the loader lock */
    start(commands);
    for (;;) {
      sleep_ms(1);
      atomic_fetch_add(&progress, 1);
    }
  } else if (strcmp(mode, "busy") == 0) {
    target_log = fdopen(3, "w");
    if (!target_log) return 3;
    start(mapper);
    start(logger);
    sleep_ms(5);
    start(commands); /* last: the highest tid */
    volatile unsigned long spin = 0;
    for (;;) spin++;
  } else {
    return 2;
  }
  announce_ready();
  command_loop(on_command);
  return 0;
}
