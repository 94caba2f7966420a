/* Linked into the worker host of the coverage build only (make coverage).
 * The launcher ends workers with SIGKILL, which never runs gcov's exit-time
 * dump, so a thread writes the counters out every 100 ms instead: dump merges
 * them into the .gcda files, reset zeroes them so the next dump adds only new
 * counts. A line run in the instant between the two may be missed; the
 * figure is a lower bound. */
#include <pthread.h>
#include <time.h>

extern void __gcov_dump(void);
extern void __gcov_reset(void);

static void* flusher(void* arg) {
  (void)arg;
  const struct timespec tick = {0, 100 * 1000 * 1000};
  for (;;) {
    nanosleep(&tick, NULL);
    __gcov_dump();
    __gcov_reset();
  }
  return NULL;
}

__attribute__((constructor)) static void start_flusher(void) {
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_create(&t, &a, flusher, NULL);
  pthread_attr_destroy(&a);
}
