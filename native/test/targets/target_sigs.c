/* Signals and injection. The main thread reads commands; SIGUSR1, SIGCONT and
 * SIGRTMIN have counting handlers (SA_RESTART); SIGUSR2 is blocked in the main
 * thread. Mode (argv[1]):
 *   plain
 *   segv-blocked   a SIGSEGV handler is installed and SIGSEGV blocked in main
 *   segv-ignored   SIGSEGV is ignored
 *   trap-ignored   SIGTRAP is ignored and SIGSEGV blocked (the injector must
 *                  fall back to its SIGSEGV trap without touching either)
 * Commands: "count" -> "usr1 N cont N rt N errors N",
 *           "sigstate" -> the main thread's mask and the handlers of SEGV/TRAP/USR2. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include "commands.h"

static atomic_int usr1, cont, rt;
static void on_usr1(int s) { (void)s; atomic_fetch_add(&usr1, 1); }
static void on_cont(int s) { (void)s; atomic_fetch_add(&cont, 1); }
static void on_rt(int s, siginfo_t* si, void* u) { (void)s; (void)si; (void)u; atomic_fetch_add(&rt, 1); }
static void on_segv(int s) { (void)s; _exit(99); }

static void handle(int sig, void (*fn)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sa.sa_flags = SA_RESTART;
  sigaction(sig, &sa, NULL);
}

static const char* disposition(int sig) {
  struct sigaction sa;
  sigaction(sig, NULL, &sa);
  if (sa.sa_handler == SIG_DFL) return "dfl";
  if (sa.sa_handler == SIG_IGN) return "ign";
  return "handler";
}

static int on_command(const char* line) {
  if (strcmp(line, "count") == 0) {
    say("usr1 %d cont %d rt %d errors %d", atomic_load(&usr1), atomic_load(&cont), atomic_load(&rt), read_errors);
    return 1;
  }
  if (strcmp(line, "sigstate") == 0) {
    sigset_t m;
    pthread_sigmask(SIG_BLOCK, NULL, &m);
    char bits[65];
    for (int s = 1; s <= 64; s++) bits[s - 1] = sigismember(&m, s) == 1 ? '1' : '0';
    bits[64] = '\0';
    say("mask %s segv %s trap %s usr2 %s", bits, disposition(SIGSEGV), disposition(SIGTRAP), disposition(SIGUSR2));
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "plain";
  handle(SIGUSR1, on_usr1);
  handle(SIGCONT, on_cont);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_rt;
  sa.sa_flags = SA_RESTART | SA_SIGINFO;
  sigaction(SIGRTMIN, &sa, NULL);
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  if (strcmp(mode, "segv-blocked") == 0 || strcmp(mode, "trap-ignored") == 0) {
    handle(SIGSEGV, on_segv);
    sigaddset(&block, SIGSEGV);
  }
  if (strcmp(mode, "segv-ignored") == 0) signal(SIGSEGV, SIG_IGN);
  if (strcmp(mode, "trap-ignored") == 0) signal(SIGTRAP, SIG_IGN);
  pthread_sigmask(SIG_BLOCK, &block, NULL);
  announce_ready();
  command_loop(on_command);
  return 0;
}
