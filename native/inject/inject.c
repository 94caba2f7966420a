/*
 * Nightfuse injector (see include/nightfuse/inject.h).
 *
 * Sequence: check the target and the library -> find dlopen/dlsym/dlerror in
 * the target's libc and two code gadgets there -> start a tracer thread ->
 * pick ONE thread parked in an idle wait (proc_scan.c), seize and interrupt
 * only it, letting the target run and retrying for up to safe_wait_ms -> save
 * its registers, FP/vector state and signal mask -> block its asynchronous
 * signals -> remote calls on it (dlopen; the entry, resolved in what the
 * target loaded; dlerror on failure), each returning into a trap -> restore
 * everything, detach with any signal it was owed -> the tracer thread exits.
 *
 * Every other thread runs throughout, so no remote call can need a lock held
 * by a thread we stopped. A call that still does not return in time is left
 * to finish and restores the thread itself (remote.c).
 */
#include "inject_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 4096
#define RTLD_NOW_ 0x00002
#define RTLD_DLOPEN_FLAG_ 0x80000000 /* __libc_dlopen_mode wants __RTLD_DLOPEN */
#define FALLBACK_MS 250              /* after safe_wait: how long to look for a thread in user code */
#define LOADER_BUSY (-3)             /* run_calls: the loader's lock was taken by another thread; nothing done */

double nf_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int nf_fail(nf_inject_report* r, const char* fmt, ...) {
  if (r->error[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Appends context to the error already set. */
static void add_error(nf_inject_report* r, const char* text) {
  size_t n = strlen(r->error);
  snprintf(r->error + n, sizeof r->error - n, "%s", text);
}

int nf_inject_report_size(void) { return (int)sizeof(nf_inject_report); }

typedef struct {
  pid_t pid;
  const char* library;
  const char* entry;
  const char* arg;
  int safe_wait_ms, timeout_ms;
  nf_inject_report* rep;
  uint64_t f_dlopen, f_dlsym, f_dlerror;
  int dlopen_mode;
  tracee t;
  saved_state s;
  thread_info* threads; /* MAX_THREADS of them: take_thread_list() */
  uint64_t l_ld; /* the loaded library's dynamic section, for same_file */
  uint64_t rtld_global, rtld_global_size; /* the loader's state in the target (0: unknown) */
  uint64_t load_lock, f_trylock, f_unlock; /* _dl_load_lock and libc's pthread_mutex_trylock/unlock (0: unknown) */
  double stop_started;
  pid_t pinned;         /* a target thread whose CPU affinity we narrowed (0: none) */
  int pin_cpu;
  cpu_set_t pin_old;    /* its affinity before */
  int rc;
} job;

static const uint64_t SYNC_SIGNALS = 1ull << (SIGSEGV - 1) | 1ull << (SIGBUS - 1) | 1ull << (SIGFPE - 1) |
                                     1ull << (SIGILL - 1) | 1ull << (SIGTRAP - 1) | 1ull << (SIGSYS - 1);

/* ------------------------------------------------------ choosing a thread */

/* The /proc thread list (128 KiB) is kept between injections: allocating it
 * anew was a fresh mapping and its page faults, ~0.1 ms per injection here. */
static thread_info* g_spare_threads;

static thread_info* take_thread_list(void) {
  thread_info* l = __atomic_exchange_n(&g_spare_threads, NULL, __ATOMIC_ACQ_REL);
  return l ? l : malloc(sizeof *l * MAX_THREADS);
}

static void give_back_thread_list(thread_info* l) {
  if (l) l = __atomic_exchange_n(&g_spare_threads, l, __ATOMIC_ACQ_REL);
  free(l); /* the one that was there, if a concurrent injection returned one meanwhile */
}

/*
 * The thread we take sleeps, its CPU most likely idle; waking an idle vCPU
 * costs 50-100 µs on a VM without guest halt polling, twice per injection
 * (its interrupt stop, the remote dlopen). So for the window it runs on the
 * tracer's CPU, which is awake, and the tracer's yields hand that CPU to it.
 * Only when its own affinity allows that CPU (a cpuset is never widened), and
 * given back afterwards unless the process changed it meanwhile.
 */
static void pin_here(job* j, pid_t tid) {
  int cpu = sched_getcpu();
  cpu_set_t old, one;
  if (cpu < 0 || sched_getaffinity(tid, sizeof old, &old) != 0 || !CPU_ISSET(cpu, &old) || CPU_COUNT(&old) < 2) return;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) return; /* the tracer thread: ours, and gone after the injection */
  if (sched_setaffinity(tid, sizeof one, &one) != 0) return;
  j->pinned = tid;
  j->pin_cpu = cpu;
  j->pin_old = old;
}

static void unpin(job* j) {
  if (!j->pinned) return;
  cpu_set_t now;
  /* Someone set it meanwhile (another thread of the process): theirs stays. */
  if (sched_getaffinity(j->pinned, sizeof now, &now) == 0 && CPU_COUNT(&now) == 1 && CPU_ISSET(j->pin_cpu, &now))
    sched_setaffinity(j->pinned, sizeof j->pin_old, &j->pin_old);
  j->pinned = 0;
}

/* Detaches the thread we only interrupted (nothing of it was changed): it goes on as it was. */
static void let_go(job* j) {
  tracee* t = &j->t;
  ptrace(PTRACE_DETACH, t->tid, 0, 0);
  t->stopped = false;
  t->tid = 0;
  unpin(j);
}

/* Seizes and interrupts `tid`; keeps it if it stopped somewhere usable: 0 kept, 1 not, -1 fatal. */
static int try_thread(job* j, pid_t tid, bool allow_user) {
  tracee* t = &j->t;
  nf_inject_report* rep = j->rep;
  double t0 = nf_now_us();
  if (ptrace(PTRACE_SEIZE, tid, 0, (void*)(long)PTRACE_O_TRACECLONE) != 0) {
    if (errno == ESRCH) return 1; /* exited meanwhile */
    return nf_fail(rep, "cannot attach to thread %d of %d: %s (is it traced already, or not yours? see ptrace(2) and /proc/sys/kernel/yama/ptrace_scope)",
                   tid, j->pid, strerror(errno));
  }
  t->tid = tid;
  pin_here(j, tid);
  t0 = nf_now_us(); /* the thread stops from here on (seizing stops nothing) */
  if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) return nf_fail(rep, "PTRACE_INTERRUPT %d: %s", tid, strerror(errno));
  for (;;) {
    stop_t st;
    if (nf_wait_stop(t, tid, nf_now_us() + 200000, &st) != 0) {
      t->tid = 0;
      if (st.kind == STOP_TIMEOUT) {
        /* It did not stop (it went into uninterruptible sleep): detach it at
         * its first stop, or the tracer thread's exit does. */
        if (t->n_clones < MAX_CLONES) t->clones[t->n_clones++] = tid;
        return 1;
      }
      if (st.kind == STOP_EXITED && (tid == j->pid || kill(j->pid, 0) != 0)) {
        rep->target_exited = 1;
        return nf_fail(rep, "target %d exited during injection", j->pid);
      }
      return st.kind == STOP_ERROR ? -1 : 1;
    }
    if (st.kind == STOP_INTERRUPT) break;
    if (st.kind == STOP_GROUP) {
      /* The process is stopping (SIGSTOP...): leave it stopped, do not inject into it. */
      ptrace(PTRACE_DETACH, tid, 0, 0);
      t->tid = 0;
      rep->group_stop = 1;
      return 1;
    }
    if (st.kind == STOP_EVENT && st.event == PTRACE_EVENT_CLONE) {
      unsigned long child = 0;
      if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &child) == 0 && child && t->n_clones < MAX_CLONES) t->clones[t->n_clones++] = (pid_t)child;
      nf_detach_clones(t, true);
    }
    /* A signal that reached it before our interrupt: delivered now, as it would have been. */
    ptrace(PTRACE_CONT, tid, 0, (void*)(long)(st.kind == STOP_SIGNAL ? st.sig : 0));
  }
  t->stopped = true;
  struct user_regs_struct r;
  if (ptrace(PTRACE_GETREGS, tid, 0, &r) != 0) return nf_fail(rep, "cannot read registers of %d: %s", tid, strerror(errno));
  j->s.regs = r;
  bool in_syscall = (long long)r.orig_rax >= 0;
  if ((in_syscall && nf_syscall_is_idle_wait((long)r.orig_rax, (long)r.rsi)) || (!in_syscall && allow_user)) {
    rep->attach_us = nf_now_us() - t0;
    j->stop_started = t0;
    rep->safe_point = in_syscall;
    rep->syscall_nr = in_syscall ? (int)r.orig_rax : -1;
    return 0;
  }
  let_go(j); /* somewhere it may hold a lock */
  return 1;
}

static int fail_loader_busy(job* j, pid_t holder) {
  j->rep->loader_busy = holder;
  return nf_fail(j->rep, "thread %d of %d holds the dynamic loader's lock (inside dlopen or dlclose, e.g. a constructor that waits): "
                 "a dlopen now would wait for it, and deadlock if the thread it ran on held what that one waits for; not injecting, try again later",
                 holder, j->pid);
}

static pid_t loader_holder(job* j, int n) {
  if (!j->rtld_global) return 0;
  pid_t h = nf_loader_lock_holder(j->pid, j->rtld_global, j->rtld_global_size, j->threads, n);
  return h > 0 ? h : 0;
}

static int choose_thread(job* j) {
  nf_inject_report* rep = j->rep;
  double started = nf_now_us();
  double safe_deadline = started + (j->safe_wait_ms > 0 ? j->safe_wait_ms * 1000.0 : 0);
  /* Other threads only once the main thread has had a moment to come back to its wait: the main
   * thread of a worker host holds no application lock there, another thread may (one that sleeps
   * holding a mutex a constructor in the loader waits for would deadlock our dlopen). */
  double others_from = started + (j->safe_wait_ms > 0 ? (j->safe_wait_ms < 50 ? j->safe_wait_ms : 50) * 500.0 : 0);
  bool fallback = false;
  for (;;) {
    rep->attempts++;
    int n = nf_list_threads(j->pid, j->threads, MAX_THREADS);
    if (n <= 0) {
      rep->target_exited = 1;
      return nf_fail(rep, "target %d exited (no threads in /proc)", j->pid);
    }
    int live = 0, dstate = 0, stopped = 0, busy = 0;
    bool main_may_wait = false; /* the main thread is running or in a system call: it may come back to its wait */
    for (int i = 0; i < n; i++) {
      thread_info* th = &j->threads[i];
      live += th->kind != TH_GONE;
      dstate += th->kind == TH_DSTATE;
      stopped += th->kind == TH_STOPPED;
      busy += th->kind == TH_SYSCALL && !nf_syscall_is_idle_wait(th->nr, th->arg1);
      if (th->tid == j->pid) main_may_wait = th->kind == TH_SYSCALL || th->kind == TH_RUNNING || th->kind == TH_BLOCKED;
    }
    rep->threads_seen = live;
    /* A thread inside the loader (a dlopen whose constructor waits, say) holds its lock: our dlopen would
     * wait for it on the thread we took, and if that thread holds what the other waits for, neither ever
     * goes on. So nothing is taken while the loader is busy; it is asked again once a thread is stopped. */
    pid_t holder = loader_holder(j, n);
    for (int pass = 0; pass < 2 && holder == 0; pass++) {
      if (pass == 1 && main_may_wait && nf_now_us() < others_from) break;
      for (int i = 0; i < n; i++) {
        thread_info* th = &j->threads[i];
        if (th->kind == TH_GONE) continue;
        /* The main thread first (a worker host waits there), then the others. */
        if ((pass == 0) != (th->tid == j->pid)) continue;
        bool idle = th->kind == TH_SYSCALL && nf_syscall_is_idle_wait(th->nr, th->arg1);
        bool user = fallback && (th->kind == TH_RUNNING || th->kind == TH_BLOCKED);
        if (!idle && !user) continue;
        int r = try_thread(j, th->tid, fallback); /* not kept: let_go unpinned it; fatal: tracer_main's exit does */
        if (r < 0) return r;
        if (r == 0 && (holder = loader_holder(j, n)) == 0) return 0;
        if (r == 0) let_go(j);
      }
    }
    if (holder > 0) rep->loader_busy = holder;
    double now = nf_now_us();
    if (now >= safe_deadline && !fallback) {
      if (j->safe_wait_ms < 0)
        return nf_fail(rep, "no thread of %d reached an idle wait (read, poll, sleep...) within the wait; not injecting into running user code", j->pid);
      fallback = true;
      safe_deadline = now + FALLBACK_MS * 1000.0;
      continue;
    }
    if (fallback && now >= safe_deadline) {
      if (holder > 0) return fail_loader_busy(j, holder);
      if (stopped == live) return nf_fail(rep, "target %d is stopped (SIGSTOP or similar): continue it first", j->pid);
      return nf_fail(rep, "no thread of %d could be used: %d of %d in uninterruptible sleep, %d in a system call that may hold a lock (futex on a lock, write, mmap...), %d stopped",
                     j->pid, dstate, live, busy, stopped);
    }
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
}

/* ------------------------------------------------------------- the calls */

static void peek_string(pid_t pid, uint64_t addr, char* out, size_t outlen) {
  size_t got = 0;
  while (got + 1 < outlen) {
    char buf[64];
    size_t want = sizeof buf, to_page = 4096 - ((addr + got) & 4095);
    if (want > to_page) want = to_page; /* process_vm_readv fails across an unmapped boundary */
    struct iovec local = {buf, want}, remote = {(void*)(addr + got), want};
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n && got + 1 < outlen; i++) {
      out[got++] = buf[i];
      if (buf[i] == '\0') return;
    }
  }
  out[got] = '\0';
}

static int put(pid_t pid, uint64_t addr, const char* s, size_t len) {
  struct iovec local = {(void*)s, len}, remote = {(void*)addr, len};
  return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* What a failed call leaves: 0 the thread is at a stop and can be restored, -1 it cannot. */
static int after_failed_call(job* j, call_result cr, bool in_loader) {
  if (cr == CALL_CRASHED && in_loader) {
    j->rep->damaged = 1;
    add_error(j->rep, " inside dlopen (a constructor of the library?): the loader's lock may stay held, and later dlopen calls in the target would hang; the target is damaged");
  } else if (cr == CALL_CRASHED) {
    add_error(j->rep, "; the target was restored");
  }
  return cr == CALL_CRASHED || cr == CALL_ERROR ? 0 : -1;
}

/* The calls, on the stopped thread. 0 ok; -1 failed with the thread restorable; -2 not restorable. */
static int run_calls(job* j) {
  tracee* t = &j->t;
  saved_state* s = &j->s;
  nf_inject_report* rep = j->rep;
  const char* entry = j->entry ? j->entry : "";
  const char* arg = j->arg ? j->arg : "";
  size_t lib_len = strlen(j->library) + 1, entry_len = strlen(entry) + 1, arg_len = strlen(arg) + 1;
  /* Below the red zone: the strings, the self-restore frame, the return slot. */
  uint64_t a_lib = (s->regs.rsp - 128 - lib_len - entry_len - arg_len) & ~0xFull;
  uint64_t a_entry = a_lib + lib_len, a_arg = a_entry + entry_len;
  t->frame = (a_lib - nf_frame_size(s)) & ~0xFull;
  t->sp = t->frame - 8;
  /* One write: the return slot (the trap), the frame area (left for a
   * self-restore frame, written only if a call outlives its timeout), the strings. */
  size_t span = (size_t)(a_arg + arg_len - t->sp);
  uint8_t* img = calloc(1, span);
  if (!img) return nf_fail(rep, "out of memory");
  uint64_t ra = t->trap_sig == SIGTRAP ? t->gad.int3 : 0;
  memcpy(img, &ra, 8);
  memcpy(img + (a_lib - t->sp), j->library, lib_len);
  memcpy(img + (a_entry - t->sp), entry, entry_len);
  memcpy(img + (a_arg - t->sp), arg, arg_len);
  int wrote = put(j->pid, t->sp, (const char*)img, span);
  free(img);
  if (wrote != 0) return nf_fail(rep, "cannot write to the target's stack: %s", strerror(errno));
  t->ra_written = true;
  uint64_t mask = ~SYNC_SIGNALS;
  if (ptrace(PTRACE_SETSIGMASK, t->tid, (void*)sizeof mask, &mask) != 0) return nf_fail(rep, "PTRACE_SETSIGMASK: %s", strerror(errno));

  uint64_t handle = 0;
  call_result cr;
  /* On a thread other than the main one (it may hold an application mutex that a constructor in the
   * loader waits for), the loader's lock is taken first with trylock: busy, and nothing happened (we
   * go back and wait); taken, and no dlopen can enter between our check and ours. The main thread
   * was given time to come back to its wait first, so this costs two calls only in that case. */
  bool locked = false;
  if (t->tid != j->pid && j->load_lock && j->f_trylock && j->f_unlock) {
    uint64_t busy = 1, la[6] = {j->load_lock};
    cr = nf_remote_call(t, s, j->f_trylock, la, j->timeout_ms, &busy, "pthread_mutex_trylock(the loader's lock)");
    if (cr != CALL_OK) return after_failed_call(j, cr, false) == 0 ? -1 : -2;
    if ((int32_t)busy != 0) return LOADER_BUSY;
    locked = true;
  }
  double d0 = nf_now_us();
  uint64_t args[6] = {a_lib, (uint64_t)j->dlopen_mode};
  cr = nf_remote_call(t, s, j->f_dlopen, args, j->timeout_ms, &handle, "dlopen");
  rep->dlopen_us = nf_now_us() - d0;
  if (cr != CALL_OK) {
    if (locked && cr == CALL_LEFT_RUNNING) {
      rep->damaged = 1;
      add_error(rep, "; the loader's lock, taken for it, stays held by that thread when it returns: other dlopen calls in the target will wait forever, replace the process");
    }
    return after_failed_call(j, cr, true) == 0 ? -1 : -2;
  }
  if (locked) {
    uint64_t ignored = 0, la[6] = {j->load_lock};
    cr = nf_remote_call(t, s, j->f_unlock, la, j->timeout_ms, &ignored, "pthread_mutex_unlock(the loader's lock)");
    if (cr != CALL_OK) return after_failed_call(j, cr, false) == 0 ? -1 : -2;
  }
  if (handle == 0) {
    uint64_t msg = 0;
    char text[400] = "";
    uint64_t none[6] = {0};
    if (j->f_dlerror) {
      cr = nf_remote_call(t, s, j->f_dlerror, none, j->timeout_ms, &msg, "dlerror");
      if (cr != CALL_OK) return after_failed_call(j, cr, false) == 0 ? -1 : -2;
      if (msg) peek_string(j->pid, msg, text, sizeof text);
    }
    return nf_fail(rep, "dlopen(%s) failed in the target: %s", j->library, text[0] ? text : "(no dlerror text)");
  }
  rep->handle = handle;
  if (!*entry) return 0;
  /* The entry as the target loaded it (glibc's handle is its struct link_map). */
  uint64_t fn = 0;
  if (nf_remote_dlsym(j->pid, handle, entry, &fn, &j->l_ld) != 0) {
    uint64_t a2[6] = {handle, a_entry};
    cr = nf_remote_call(t, s, j->f_dlsym, a2, j->timeout_ms, &fn, "dlsym");
    if (cr != CALL_OK) return after_failed_call(j, cr, false) == 0 ? -1 : -2;
  }
  if (fn == 0) return nf_fail(rep, "entry symbol %s is not in the library as the target loaded it", entry);
  uint64_t result = 0, a3[6] = {a_arg};
  double e0 = nf_now_us();
  cr = nf_remote_call(t, s, fn, a3, j->timeout_ms, &result, "the entry function");
  rep->entry_us = nf_now_us() - e0;
  if (cr != CALL_OK) return after_failed_call(j, cr, false) == 0 ? -1 : -2;
  rep->entry_result = (int32_t)result;
  if (rep->entry_result != 0) return nf_fail(rep, "entry %s returned %d", entry, rep->entry_result);
  return 0;
}

/* Puts the thread back and detaches it, owed signals first. */
static int restore_and_detach(job* j) {
  tracee* t = &j->t;
  int rc = 0;
  if (nf_restore_state(t->tid, &j->s) != 0) rc = nf_fail(j->rep, "cannot restore thread %d: %s", t->tid, strerror(errno));
  int sig = 0;
  if (t->n_held > 0 && ptrace(PTRACE_SETSIGINFO, t->tid, 0, &t->held[0]) == 0) {
    sig = t->held[0].si_signo; /* delivered with its own siginfo */
    memmove(t->held, t->held + 1, sizeof t->held[0] * (size_t)--t->n_held);
    j->rep->signals_held++;
  }
  nf_detach_clones(t, true);
  if (ptrace(PTRACE_DETACH, t->tid, 0, (void*)(long)sig) != 0 && rc == 0)
    rc = nf_fail(j->rep, "cannot detach thread %d: %s", t->tid, strerror(errno));
  for (int i = 0; i < t->n_held; i++) syscall(SYS_tgkill, j->pid, t->tid, t->held[i].si_signo);
  j->rep->signals_held += t->n_held;
  t->n_held = 0;
  t->stopped = false;
  t->tid = 0;
  return rc;
}

static void* tracer_main(void* p) {
  job* j = p;
  sigset_t all;
  sigfillset(&all);
  /* Every stop of our tracee sends SIGCHLD to the tracer, this thread. Blocked
   * here, the kernel would hand it to another thread of the process and wake
   * that one for it, at each stop of the window (measured: ~80 µs more per
   * injection on a 2-vCPU VM); left open, it is dropped at once where its
   * disposition is the default, and a process's own SIGCHLD handler (libuv's
   * writes to a pipe, async-signal-safe) runs here, on a thread that is awake.
   * Every other signal is blocked: the process's handlers for them never run here. */
  sigdelset(&all, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  j->rc = -1;
  if (choose_thread(j) != 0 || j->t.tid == 0) {
    if (j->rep->error[0] == '\0') nf_fail(j->rep, "no thread to run on");
    goto out;
  }
  int r;
  double busy_until = nf_now_us() + (j->safe_wait_ms > 0 ? j->safe_wait_ms * 1000.0 : 0) + FALLBACK_MS * 1000.0;
  for (;;) {
    j->rep->thread_used = j->t.tid;
    if (nf_save_state(j->t.tid, &j->s) != 0) {
      nf_fail(j->rep, "cannot read the state of thread %d: %s", j->t.tid, strerror(errno));
      ptrace(PTRACE_DETACH, j->t.tid, 0, 0);
      goto out;
    }
    r = run_calls(j);
    if (r != -2 && !j->rep->target_exited && j->t.tid) {
      if (restore_and_detach(j) != 0) r = -1;
    }
    if (r != LOADER_BUSY) break;
    /* The loader was busy when we asked: nothing was done; the thread is back as it was. */
    j->rep->thread_used = 0;
    pid_t owner = nf_mutex_owner(j->pid, j->load_lock);
    if (owner > 0) j->rep->loader_busy = owner;
    if (nf_now_us() >= busy_until) {
      r = fail_loader_busy(j, j->rep->loader_busy);
      break;
    }
    unpin(j);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    if (choose_thread(j) != 0 || j->t.tid == 0) {
      if (j->rep->error[0] == '\0') nf_fail(j->rep, "no thread to run on");
      goto out;
    }
  }
  j->rc = r == 0 ? 0 : -1;
out:
  if (j->stop_started > 0) j->rep->stopped_us = nf_now_us() - j->stop_started;
  nf_detach_clones(&j->t, true);
  unpin(j);
  return NULL; /* exiting detaches anything still attached (exit_ptrace) */
}

/*
 * The tracer thread. ptrace ties tracees to the thread that attached, and
 * the caller's thread (a thread pool's) outlives the call: so the work runs on
 * a thread of its own that exits when the injection is over, which detaches
 * anything still attached (a thread that never stopped). A thread per
 * injection rather than one kept between them: its start (~50 µs) falls
 * outside the stopped window, and with a kept one, woken by the caller and
 * waking it in turn, the window was ~50 µs longer on our 2-vCPU VM
 * (docs/NATIVE-SAFETY.md).
 */
static int run_traced(job* j) {
  pthread_t t;
  int e = pthread_create(&t, NULL, tracer_main, j);
  if (e == 0) pthread_join(t, NULL);
  return e;
}

/* ------------------------------------------------------------------ API */

static bool ignored(uint64_t ign, int sig) { return (ign >> (sig - 1)) & 1; }

int nf_inject(int32_t pid, const char* library, const char* entry, const char* arg, int32_t safe_wait_ms,
              int32_t timeout_ms, nf_inject_report* rep) {
  double t0 = nf_now_us();
  memset(rep, 0, sizeof *rep);
  rep->syscall_nr = -1;
  rep->same_file = -1;
  if (timeout_ms <= 0) timeout_ms = 5000;
  job* j = NULL;
  int rc = -1;
  char err[256], libreal[4096];
  if (pid <= 0) { nf_fail(rep, "invalid pid %d", pid); goto out; }
  if (pid == getpid()) { nf_fail(rep, "refusing to inject into the injector's own process"); goto out; }
  if (!library || !*library) { nf_fail(rep, "no library given"); goto out; }
  if (!realpath(library, libreal)) { nf_fail(rep, "library %s: %s", library, strerror(errno)); goto out; }
  if (access(libreal, R_OK) != 0) { nf_fail(rep, "library %s is not readable: %s", libreal, strerror(errno)); goto out; }
  if (nf_inject_check_elf(libreal, 1, err, sizeof err)) { nf_fail(rep, "%s", err); goto out; }
  char exe[64];
  snprintf(exe, sizeof exe, "/proc/%d/exe", pid);
  if (kill(pid, 0) != 0 && errno == ESRCH) { nf_fail(rep, "no process %d", pid); goto out; }
  /* AT_EACCESS: with our effective credentials. Plain access(2) checks with the real ones and
   * clears a non-root caller's capabilities, so a target holding any (podman hands a non-root
   * container's capabilities to every process as ambient ones) looked untraceable. */
  if (faccessat(AT_FDCWD, exe, R_OK, AT_EACCESS) != 0 && (errno == EACCES || errno == EPERM)) {
    nf_fail(rep, "not permitted to trace process %d (%s on %s): it is not yours, or ptrace is restricted (see ptrace(2), /proc/sys/kernel/yama/ptrace_scope)",
            pid, strerror(errno), exe);
    goto out;
  }
  if (nf_inject_check_elf(exe, 0, err, sizeof err)) { nf_fail(rep, "target %d: %s", pid, err); goto out; }
  j = calloc(1, sizeof *j);
  if (j) j->threads = take_thread_list();
  if (!j || !j->threads) { nf_fail(rep, "out of memory"); goto out; }
  j->pid = pid;
  j->library = libreal;
  j->entry = entry;
  j->arg = arg;
  j->safe_wait_ms = safe_wait_ms;
  j->timeout_ms = timeout_ms;
  j->rep = rep;
  j->t.pid = pid;
  j->t.rep = rep;

  libc_map libc;
  uint64_t first_vaddr = 0;
  libc_map ld;
  if (nf_find_libc(pid, &libc, &ld, rep)) goto out;
  sym_query q[] = {{.name = "dlopen"},        {.name = "dlsym"},         {.name = "dlerror"},
                   {.name = "__libc_dlopen_mode"}, {.name = "__libc_dlsym"}, {.name = "pthread_mutex_trylock"},
                   {.name = "pthread_mutex_unlock"}};
  if (nf_elf_dynsyms(libc.path, q, 7, &first_vaddr, rep)) goto out;
  uint64_t base = libc.start - first_vaddr;
  bool legacy = q[0].value == 0;
  if ((legacy && q[3].value == 0) || (!q[1].value && !q[4].value)) {
    nf_fail(rep, "the target's libc (%s) exports neither dlopen nor __libc_dlopen_mode / dlsym", libc.path);
    goto out;
  }
  j->f_dlopen = base + (legacy ? q[3].value : q[0].value);
  j->f_dlsym = base + (q[1].value ? q[1].value : q[4].value);
  j->f_dlerror = q[2].value ? base + q[2].value : 0;
  j->dlopen_mode = RTLD_NOW_ | (legacy ? RTLD_DLOPEN_FLAG_ : 0);
  uint64_t ld_first = 0;
  sym_query rq = {.name = "_rtld_global", .object = 1};
  nf_inject_report scratch; /* a loader we cannot read only means the busy check is off */
  if (ld.start && nf_elf_dynsyms(ld.path, &rq, 1, &ld_first, &scratch) == 0 && rq.value) {
    j->rtld_global = ld.start - ld_first + rq.value;
    j->rtld_global_size = rq.size;
    if (q[5].value && q[6].value) {
      j->load_lock = nf_find_load_lock(pid, j->rtld_global, j->rtld_global_size);
      j->f_trylock = base + q[5].value;
      j->f_unlock = base + q[6].value;
    }
  }
  if (nf_find_gadgets(&libc, &j->t.gad, rep)) goto out;
  /* The return trap: a synchronous signal the process does not ignore (the
   * kernel would reset an ignored one's handler process-wide to force it). */
  uint64_t ign = 0;
  if (nf_ignored_signals(pid, &ign) != 0) { nf_fail(rep, "cannot read the signal dispositions of %d", pid); goto out; }
  if (j->t.gad.int3 && !ignored(ign, SIGTRAP)) {
    j->t.trap_sig = SIGTRAP;
    j->t.trap_rip = j->t.gad.int3 + 1;
  } else if (!ignored(ign, SIGSEGV)) {
    j->t.trap_sig = SIGSEGV;
    j->t.trap_rip = 0;
  } else {
    nf_fail(rep, "target %d ignores both SIGTRAP and SIGSEGV: no way to take a remote call back without changing its handlers", pid);
    goto out;
  }
  rep->trap_signal = j->t.trap_sig;

  /* Refuse a missing entry before touching the target (our copy of the file;
   * the address itself comes from what the target loads). */
  if (entry && *entry) {
    sym_query eq = {.name = entry};
    uint64_t lib_first;
    if (nf_elf_dynsyms(libreal, &eq, 1, &lib_first, rep)) goto out;
    if (eq.value == 0) {
      nf_fail(rep, "entry symbol %s not found in %s (not an exported function); the target was not touched", entry, libreal);
      goto out;
    }
  }

  int e = run_traced(j);
  if (e) { nf_fail(rep, "cannot start the tracer thread: %s", strerror(e)); goto out; }
  rc = j->rc;
  if (rep->handle && !rep->target_exited) {
    uint64_t dev, ino;
    struct stat st;
    if (!j->l_ld) {
      struct iovec local = {&j->l_ld, 8}, remote = {(void*)(rep->handle + 16), 8};
      if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != 8) j->l_ld = 0;
    }
    if (j->l_ld && nf_mapping_identity(pid, j->l_ld, &dev, &ino) == 0 && stat(libreal, &st) == 0)
      rep->same_file = dev == st.st_dev && ino == st.st_ino;
  }
out:
  rep->ok = rc == 0;
  rep->total_us = nf_now_us() - t0;
  if (j) give_back_thread_list(j->threads);
  free(j);
  return rc;
}
