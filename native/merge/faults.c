/*
 * Fault containment. SIGSEGV/SIGBUS/SIGFPE/SIGILL raised while a merged
 * callee's code runs (a thread-local fault frame is armed, and disarmed
 * whenever the callee calls back into our code or the host's) jump back to
 * the call site: that call fails, the callee's route goes off for good, and
 * the launcher is told the worker may be damaged (a libc lock the callee held
 * stays held); it drains and replaces the worker. The faulting call waits for
 * that acknowledgement (at most 1 s) so no further call is dispatched to the
 * worker meanwhile. Signals raised elsewhere go to the previous handler
 * (default: die), as if we were not there.
 *
 * Handlers run on an alternate signal stack (one per thread that runs callee
 * code, unmapped when the thread exits) so a stack overflow is caught too.
 */
#include "runtime.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ALTSTACK_SIZE (64 * 1024)
#define FAULT_ACK_WAIT_MS 1000

__thread fault_frame* tls_frame __attribute__((tls_model("initial-exec")));
static struct sigaction g_old[32];
static _Atomic int g_handlers_installed;
static pthread_key_t g_altstack_key;
static pthread_once_t g_altstack_once = PTHREAD_ONCE_INIT;
static _Atomic uint32_t g_fault_seq;
__thread bool tls_altstack_done __attribute__((tls_model("initial-exec")));
_Atomic uint32_t g_fault_acked;

long nf_futex(_Atomic uint32_t* addr, int op, uint32_t val, const struct timespec* timeout) {
  return syscall(SYS_futex, (uint32_t*)addr, op | FUTEX_PRIVATE_FLAG, val, timeout, NULL, 0);
}

static void on_fault(int sig, siginfo_t* si, void* uctx) {
  fault_frame* f = tls_frame;
  if (f) {
    tls_frame = NULL;
    f->signo = sig;
    f->addr = (uintptr_t)si->si_addr;
    f->pc = (uintptr_t)((ucontext_t*)uctx)->uc_mcontext.gregs[REG_RIP];
    siglongjmp(f->env, 1);
  }
  /* Not ours: behave as if we were never here. */
  struct sigaction* old = &g_old[sig];
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction) old->sa_sigaction(sig, si, uctx);
    return;
  }
  if (old->sa_handler == SIG_IGN || old->sa_handler == SIG_DFL) {
    /* Re-executing the instruction with the default action kills the process with this signal. */
    signal(sig, SIG_DFL);
    return;
  }
  old->sa_handler(sig);
}

void nf_install_handlers(void) {
  if (atomic_exchange(&g_handlers_installed, 1)) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
  for (int i = 0; i < 4; i++) sigaction(sigs[i], &sa, &g_old[sigs[i]]);
}

/* At thread exit: our alternate stack goes (disabled first: the kernel must never deliver onto freed memory). */
static void drop_altstack(void* p) {
  stack_t off = {.ss_flags = SS_DISABLE};
  stack_t cur;
  if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == p) sigaltstack(&off, NULL);
  UNPOISON(p, ALTSTACK_SIZE);
  munmap(p, ALTSTACK_SIZE);
}

static void make_key(void) { pthread_key_create(&g_altstack_key, drop_altstack); }

void nf_ensure_altstack_slow(void) {
  tls_altstack_done = true;
  pthread_once(&g_altstack_once, make_key);
  if (pthread_getspecific(g_altstack_key)) return;
  stack_t cur;
  if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return; /* the thread has its own */
  void* p = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  stack_t ss = {.ss_sp = p, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0 || pthread_setspecific(g_altstack_key, p) != 0) munmap(p, ALTSTACK_SIZE);
}

void nf_release_altstack(void) {
  pthread_once(&g_altstack_once, make_key);
  void* p = pthread_getspecific(g_altstack_key);
  tls_altstack_done = false;
  if (!p) return;
  pthread_setspecific(g_altstack_key, NULL);
  drop_altstack(p);
}

/*
 * After a jump out of a faulting callee: frames it left below us (on this
 * thread's stack, the handler's on the altstack) keep AddressSanitizer's
 * redzone poison, which its longjmp handling cannot clear across stacks;
 * stale, it would later flag memory mapped there. A no-op without ASan.
 */
void nf_after_fault_jump(void) {
#ifdef __SANITIZE_ADDRESS__
  char here;
  pthread_attr_t a;
  void* lo;
  size_t sz;
  if (pthread_getattr_np(pthread_self(), &a) == 0) {
    if (pthread_attr_getstack(&a, &lo, &sz) == 0 && (uintptr_t)&here > (uintptr_t)lo + 256 &&
        (uintptr_t)&here < (uintptr_t)lo + sz)
      UNPOISON(lo, (uintptr_t)&here - (uintptr_t)lo - 256);
    pthread_attr_destroy(&a);
  }
  pthread_once(&g_altstack_once, make_key);
  void* alt = pthread_getspecific(g_altstack_key);
  if (alt) UNPOISON(alt, ALTSTACK_SIZE);
#endif
  nf_unblock_fault_signals();
}

void nf_unblock_fault_signals(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGSEGV);
  sigaddset(&s, SIGBUS);
  sigaddset(&s, SIGFPE);
  sigaddset(&s, SIGILL);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}

void nf_fault_acked(uint32_t id) {
  uint32_t cur = atomic_load(&g_fault_acked);
  while (id > cur && !atomic_compare_exchange_weak(&g_fault_acked, &cur, id)) {
  }
  nf_futex(&g_fault_acked, FUTEX_WAKE, INT32_MAX, NULL);
}

/* Runs on the faulting call's thread after the jump back: the route goes off,
 * the launcher is told, and we wait (bounded) for it to say it has the worker
 * out of dispatch. Only syscalls and atomics here: a libc lock may be held. */
void nf_note_fault(callee* c, instance* in, const fault_frame* f) {
  atomic_store(&in->broken, true);
  atomic_store(&c->routed, 0); /* the hook itself is the control thread's to update */
  uint32_t id = atomic_fetch_add(&g_fault_seq, 1) + 1;
  c->fault_signo = f->signo;
  c->fault_addr = f->addr;
  c->fault_in_callee = f->pc >= c->text_lo && f->pc < c->text_hi;
  c->fault_id = id;
  atomic_fetch_add_explicit(&c->faults, 1, memory_order_relaxed);
  atomic_store(&c->faulted, 1);
  uint64_t one = 1;
  if (g_event_fd < 0 || !atomic_load(&g_running) || write(g_event_fd, &one, 8) != 8) return;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    uint32_t acked = atomic_load(&g_fault_acked);
    if (acked >= id || !atomic_load(&g_running)) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long left_ms = FAULT_ACK_WAIT_MS - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
    if (left_ms <= 0) return;
    struct timespec ts = {0, (left_ms < 50 ? left_ms : 50) * 1000000L}; /* re-check g_running now and then */
    nf_futex(&g_fault_acked, FUTEX_WAIT, acked, &ts);
  }
}
