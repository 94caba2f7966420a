/* Main thread in read(2); a timer delivers SIGALRM every millisecond to a
 * handler that counts. "count" on stdin answers with the count, so the test
 * can see signals keep arriving (and read keeps restarting) after injection. */
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include "target_common.h"

static volatile sig_atomic_t count;
static int errors;
static void on_alarm(int s) {
  (void)s;
  count++;
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 1000}, {0, 1000}};
  setitimer(ITIMER_REAL, &it, NULL);
  announce_ready();
  char buf[256];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf - 1);
    if (n < 0) { /* with SA_RESTART, an error here means a broken restart */
      errors++;
      continue;
    }
    if (n == 0) return 0;
    buf[n] = '\0';
    if (strncmp(buf, "count", 5) == 0) printf("count %d errors %d\n", (int)count, errors);
    else printf("echo %s", buf);
    fflush(stdout);
  }
}
