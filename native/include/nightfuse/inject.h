/*
 * The Nightfuse injector: loads a shared library into a running x86-64 Linux
 * process and calls an entry symbol in it, with ptrace, without gdb or helper
 * binaries, leaving the process as it was (registers, FP/vector state,
 * interrupted system calls) and detached, whatever happens.
 *
 * ptrace requests must come from the thread that attached: nf_inject() does
 * attach -> inject -> detach in ONE call. It blocks (up to timeout_ms); call it
 * off any event loop.
 */
#ifndef NIGHTFUSE_INJECT_H_
#define NIGHTFUSE_INJECT_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NF_INJECT_ERROR_LEN 512

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
} nf_inject_report;

/*
 * Loads `library` (RTLD_NOW | RTLD_LOCAL) into process `pid`, then calls
 * `int entry(const char* arg)` in it if `entry` is non-empty (NULL/"" = only load).
 * `safe_wait_ms`: how long to keep looking for a thread blocked in a system
 * call before using one running user code (0 = use any thread at once, -1 =
 * never: fail instead). `timeout_ms` bounds each remote call.
 * Returns 0 on success, -1 with report->error set.
 */
int nf_inject(int32_t pid, const char* library, const char* entry, const char* arg, int32_t safe_wait_ms,
              int32_t timeout_ms, nf_inject_report* report);

/* The ELF checks the injector applies, usable on any file:
 * want_shared=0: an x86-64 ELF executable or PIE; 1: an x86-64 shared object.
 * Returns 0 or -1 with a message in err. */
int nf_inject_check_elf(const char* path, int want_shared, char* err, int errlen);

/* sizeof(nf_inject_report), for bindings to check their layout. */
int nf_inject_report_size(void);

#ifdef __cplusplus
}
#endif

#endif /* NIGHTFUSE_INJECT_H_ */
