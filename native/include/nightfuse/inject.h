/*
 * The Nightfuse injector: loads a shared library into a running x86-64 Linux
 * process and calls an entry symbol in it, with ptrace, without gdb or helper
 * binaries, leaving the process as it was (registers, FP/vector state, signal
 * mask and handlers, interrupted system calls, signals that arrived meanwhile)
 * and detached, whatever happens.
 *
 * Only the one thread the calls run on is ever stopped; the others keep
 * running (the loader is thread-safe, and a lock another thread holds is
 * released as it runs). nf_inject() does attach -> inject -> detach in ONE
 * call, on a tracer thread of its own that exits before it returns, so no
 * tracee can stay attached to the caller's (e.g. a thread pool's) thread.
 * It blocks (up to about safe_wait_ms + timeout_ms); call it off any event loop.
 */
#ifndef NIGHTFUSE_INJECT_H_
#define NIGHTFUSE_INJECT_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NF_INJECT_ERROR_LEN 512
#define NF_INJECT_API __attribute__((visibility("default")))

typedef struct {
  int32_t ok;                 /* 1 on success */
  int32_t threads_seen;       /* threads stopped in the final round */
  int32_t thread_used;        /* tid the remote calls ran on, 0 if none */
  int32_t safe_point;         /* 1: that thread was blocked in a system call */
  int32_t syscall_nr;         /* its system call, or -1 (user code) */
  int32_t attempts;           /* stop rounds until a safe point was found */
  int32_t entry_result;       /* return value of the entry function */
  int32_t target_exited;      /* 1 if the target exited during injection */
  double stopped_us;          /* world stopped: first interrupt -> last detach */
  double total_us;            /* the whole call */
  double dlopen_us;           /* the remote dlopen alone */
  double attach_us;           /* seizing and stopping every thread (final round) */
  double entry_us;            /* the remote entry call alone */
  uint64_t handle;            /* dlopen handle in the target */
  char error[NF_INJECT_ERROR_LEN];
  /* Appended later (a binding of the older, shorter layout reads a prefix). */
  int32_t trap_signal;        /* what hands control back after each call: SIGTRAP (int3 in libc) or SIGSEGV (address 0) */
  int32_t signals_held;       /* signals sent to the thread during the calls, delivered after */
  int32_t clones_detached;    /* threads created during the injection (auto-attached, detached at once) */
  int32_t same_file;          /* 1: the target mapped this very file; 0: another one of that path (a stale copy, another mount namespace); -1: unknown */
  int32_t left_running;       /* 1: a call outlived timeout_ms and was left to finish; the thread restores itself when it returns */
  int32_t damaged;            /* 1: the target could not be left as healthy as before (error says why) */
  int32_t group_stop;         /* 1: the process was group-stopped (SIGSTOP...) meanwhile, and is left stopped */
  int32_t loader_busy;        /* tid of a thread found holding the dynamic loader's lock (then nothing was taken), 0 if none */
} nf_inject_report;

/*
 * Loads `library` (RTLD_NOW | RTLD_LOCAL) into process `pid`, then calls
 * `int entry(const char* arg)` in it if `entry` is non-empty (NULL/"" = only load).
 * `safe_wait_ms`: how long to keep looking for a thread parked in an idle
 * wait (read, poll, sleep, accept, a condition variable...: a system call no
 * libc lock is held across) before using one running user code (0 = use any
 * thread at once, -1 = never: fail instead). A thread in any other system
 * call (futex on a lock, write, mmap...) or in uninterruptible sleep is
 * never used. `timeout_ms` bounds each remote call: one that outlives it is
 * not abandoned but left to finish (report->left_running).
 * Returns 0 on success, -1 with report->error set.
 */
NF_INJECT_API int nf_inject(int32_t pid, const char* library, const char* entry, const char* arg, int32_t safe_wait_ms,
              int32_t timeout_ms, nf_inject_report* report);

/* The ELF checks the injector applies, usable on any file:
 * want_shared=0: an x86-64 ELF executable or PIE; 1: an x86-64 shared object.
 * Returns 0 or -1 with a message in err. */
NF_INJECT_API int nf_inject_check_elf(const char* path, int want_shared, char* err, int errlen);

/* sizeof(nf_inject_report), for bindings to check their layout. */
NF_INJECT_API int nf_inject_report_size(void);

#ifdef __cplusplus
}
#endif

#endif /* NIGHTFUSE_INJECT_H_ */
