/* Eight threads blocked in different system calls (nanosleep, futex via a
 * condition variable, poll, read on a pipe, epoll-less sleep loops), plus the
 * main thread in read(2) on stdin. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include "target_common.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pipefd[2];
static atomic_long ticks;

static void* sleeper(void* a) {
  (void)a;
  for (;;) {
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
    atomic_fetch_add(&ticks, 1);
  }
  return NULL;
}
static void* waiter(void* a) {
  (void)a;
  pthread_mutex_lock(&mu);
  for (;;) pthread_cond_wait(&cv, &mu);
  return NULL;
}
static void* poller(void* a) {
  (void)a;
  for (;;) poll(NULL, 0, 5);
  return NULL;
}
static void* reader(void* a) {
  (void)a;
  char c;
  for (;;)
    if (read(pipefd[0], &c, 1) <= 0) break;
  return NULL;
}

int main(void) {
  if (pipe(pipefd)) return 1;
  pthread_t t[8];
  void* (*fns[8])(void*) = {sleeper, sleeper, waiter, waiter, poller, poller, reader, sleeper};
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, fns[i], NULL);
  announce_ready();
  echo_loop();
  return 0;
}
