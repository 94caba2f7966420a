/*
 * Internals of the injector shared by its modules (not part of the API; see
 * include/nightfuse/inject.h).
 *
 *   proc_scan.c  what /proc says about the target: threads, their system
 *                calls, signal dispositions, mappings, code gadgets
 *   elf_syms.c   symbols from an ELF file, and from a library the target
 *                loaded (its link_map, in the target's memory)
 *   remote.c     ptrace stops, remote calls on one thread, the self-restore
 *                frame for a call left running
 *   inject.c     nf_inject(): choosing the thread, the calls, restoring
 */
#ifndef NIGHTFUSE_INJECT_INTERNAL_H_
#define NIGHTFUSE_INJECT_INTERNAL_H_

#define _GNU_SOURCE
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/user.h>

#include "nightfuse/inject.h"

#define NF_HIDDEN __attribute__((visibility("hidden")))
#define XSTATE_MAX 16384
#define MAX_CLONES 64
#define MAX_HELD_SIGNALS 8

double nf_now_us(void) NF_HIDDEN;
int nf_fail(nf_inject_report* r, const char* fmt, ...) NF_HIDDEN __attribute__((format(printf, 2, 3)));

/* What makes a file the same file for the per-file caches (gadgets, symbols):
 * every worker maps the same libc, and a file replaced or rewritten in place
 * changes one of these. */
typedef struct {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
} file_id;

static inline file_id nf_file_id(const struct stat* st) {
  return (file_id){.dev = st->st_dev, .ino = st->st_ino, .size = st->st_size, .mtime = st->st_mtim, .ctime = st->st_ctim};
}

static inline bool nf_same_file(const file_id* a, const file_id* b) {
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
         a->mtime.tv_nsec == b->mtime.tv_nsec && a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* ----------------------------------------------------------- proc_scan.c */

typedef enum {
  TH_GONE,       /* no such thread any more */
  TH_RUNNING,    /* on a CPU or runnable: user code, or about to enter the kernel */
  TH_SYSCALL,    /* blocked in system call `nr` */
  TH_BLOCKED,    /* blocked outside a system call (page fault, ...) */
  TH_DSTATE,     /* uninterruptible sleep: cannot be stopped in bounded time */
  TH_STOPPED,    /* group-stopped, or traced by someone */
} thread_kind;

typedef struct {
  pid_t tid;
  thread_kind kind;
  long nr;       /* TH_SYSCALL: the system call */
  long arg1;     /* its second argument (a futex's operation) */
} thread_info;

int nf_list_threads(pid_t pid, thread_info* out, int max) NF_HIDDEN;
thread_kind nf_thread_kind(pid_t pid, pid_t tid, long* nr, long* arg1) NF_HIDDEN;
char nf_thread_state(pid_t pid, pid_t tid) NF_HIDDEN;
/* System calls a thread waits in while holding no libc-internal lock. */
bool nf_syscall_is_idle_wait(long nr, long arg1) NF_HIDDEN;
/* SigIgn of the process (bit n-1 = signal n). */
int nf_ignored_signals(pid_t pid, uint64_t* ign) NF_HIDDEN;

typedef struct {
  char path[4200];     /* through /proc/<pid>/root */
  uint64_t start;      /* lowest mapping of the file (file offset 0) */
} libc_map;
/* libc and the dynamic loader (ld-linux*.so) as mapped in the target, from one
 * read of its maps; libc is required, ld->start is 0 when there is none. */
int nf_find_libc(pid_t pid, libc_map* libc, libc_map* ld, nf_inject_report* r) NF_HIDDEN;
/* A thread of `pid` (from threads[0..n)) that holds one of the loader's own
 * locks, read from the recursive mutexes inside _rtld_global (addr, size) in
 * the target's memory; 0 if none, -1 if unreadable. */
pid_t nf_loader_lock_holder(pid_t pid, uint64_t addr, uint64_t size, const thread_info* threads, int n) NF_HIDDEN;
/* The address of _dl_load_lock inside _rtld_global (addr, size); 0 if not found. */
uint64_t nf_find_load_lock(pid_t pid, uint64_t addr, uint64_t size) NF_HIDDEN;
/* The owner tid of the pthread mutex at `addr` in the target; 0 if free or unreadable. */
pid_t nf_mutex_owner(pid_t pid, uint64_t addr) NF_HIDDEN;

/* Addresses, in the target, of an int3 byte and of glibc's __restore_rt
 * (mov $15,%rax; syscall), both in libc's executable text; 0 if absent. */
typedef struct {
  uint64_t int3;
  uint64_t restore_rt;
} gadgets;
int nf_find_gadgets(const libc_map* libc, gadgets* g, nf_inject_report* r) NF_HIDDEN;

/* The device and inode of the file mapped at `addr` in the target; -1 if none. */
int nf_mapping_identity(pid_t pid, uint64_t addr, uint64_t* dev, uint64_t* ino) NF_HIDDEN;

/* ------------------------------------------------------------ elf_syms.c */

typedef struct {
  const char* name;
  uint64_t value; /* st_value, 0 if not found */
  int hidden;     /* found only as a non-default version */
  uint64_t size;  /* st_size of what was found */
  int object;     /* looking for a data object, not a function */
} sym_query;

int nf_elf_dynsyms(const char* path, sym_query* q, int nq, uint64_t* first_load_vaddr, nf_inject_report* r) NF_HIDDEN;
/* Resolves `name` in the library whose link_map is at `lm` in the target, from
 * the target's own memory (what it really loaded). 0 and *addr, or -1. */
int nf_remote_dlsym(pid_t pid, uint64_t lm, const char* name, uint64_t* addr, uint64_t* l_ld) NF_HIDDEN;

/* -------------------------------------------------------------- remote.c */

typedef enum { STOP_SIGNAL, STOP_GROUP, STOP_INTERRUPT, STOP_EVENT, STOP_EXITED, STOP_TIMEOUT, STOP_ERROR } stop_kind;

typedef struct {
  stop_kind kind;
  int sig;          /* STOP_SIGNAL / STOP_GROUP: the signal */
  int event;        /* STOP_EVENT: PTRACE_EVENT_* */
  siginfo_t si;     /* STOP_SIGNAL */
} stop_t;

typedef struct {
  struct user_regs_struct regs;
  uint8_t xstate[XSTATE_MAX] __attribute__((aligned(64)));
  size_t xstate_len;
  struct user_fpregs_struct fpregs;
  int have_xstate, have_fpregs;
  uint64_t sigmask;
} saved_state;

typedef struct {
  pid_t pid;
  pid_t tid;                 /* the one thread we trace */
  bool stopped;              /* in a ptrace stop */
  nf_inject_report* rep;
  gadgets gad;
  int trap_sig;              /* SIGTRAP (return to int3) or SIGSEGV (return to 0) */
  uint64_t trap_rip;         /* rip at the trap stop */
  uint64_t sp;               /* return-address slot of every remote call */
  uint64_t frame;            /* self-restore frame (sp + 8): a sigreturn frame */
  bool ra_written;           /* the trap return address is in the slot at sp */
  siginfo_t held[MAX_HELD_SIGNALS]; /* trap-class signals sent to the thread during a call */
  int n_held;
  pid_t clones[MAX_CLONES];  /* threads auto-attached by PTRACE_O_TRACECLONE, not yet detached */
  int n_clones;
} tracee;

int nf_wait_stop(tracee* t, pid_t tid, double deadline, stop_t* st) NF_HIDDEN;
/* Saves registers (s->regs already read), FP/vector state and the signal mask. */
int nf_save_state(pid_t tid, saved_state* s) NF_HIDDEN;
int nf_restore_state(pid_t tid, const saved_state* s) NF_HIDDEN;
/* Bytes the self-restore frame needs above the return slot. */
size_t nf_frame_size(const saved_state* s) NF_HIDDEN;
/* Writes the sigreturn frame at t->frame that puts the thread back into `s`. */
int nf_write_restore_frame(tracee* t, const saved_state* s) NF_HIDDEN;
/* Detaches the auto-attached threads that have stopped (all of them with wait_all). */
void nf_detach_clones(tracee* t, bool wait_all) NF_HIDDEN;

typedef enum { CALL_OK, CALL_CRASHED, CALL_LEFT_RUNNING, CALL_LOST, CALL_EXITED, CALL_ERROR } call_result;
call_result nf_remote_call(tracee* t, const saved_state* s, uint64_t fn, const uint64_t args[6], int timeout_ms,
                           uint64_t* ret, const char* what) NF_HIDDEN;

#endif /* NIGHTFUSE_INJECT_INTERNAL_H_ */
