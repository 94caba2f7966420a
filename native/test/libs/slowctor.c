/* A library whose constructor waits for the target's mutex target_mu: while
 * it waits, the loader's lock is held by the thread that called dlopen. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

__attribute__((constructor)) static void wait_for_target(void) {
  pthread_mutex_t* mu = dlsym(RTLD_DEFAULT, "target_mu");
  if (!mu) return;
  pthread_mutex_lock(mu);
  pthread_mutex_unlock(mu);
}
