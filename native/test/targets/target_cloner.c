/* Threads appear and vanish all the time: one thread starts short-lived
 * threads back to back (each counts once and exits). The main thread reads
 * commands; "count" -> threads run so far. */
#include <pthread.h>
#include <stdatomic.h>
#include "commands.h"

static atomic_long runs;

static void* brief(void* a) {
  (void)a;
  atomic_fetch_add(&runs, 1);
  return NULL;
}

static void* cloner(void* a) {
  (void)a;
  for (;;) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, brief, NULL);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  }
  return NULL;
}

static int on_command(const char* line) {
  if (strcmp(line, "count") != 0) return 0;
  say("count %ld", atomic_load(&runs));
  return 1;
}

int main(void) {
  pthread_t t;
  pthread_create(&t, NULL, cloner, NULL);
  announce_ready();
  command_loop(on_command);
  return 0;
}
