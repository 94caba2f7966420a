/*
 * ptrace on the one thread an injection runs on: its stops, a remote call,
 * and the self-restore frame that lets a call that outlives its timeout run
 * to completion and put the thread back by itself.
 *
 * A remote call runs the function on the thread's own stack below its red
 * zone, with a return address that traps: an int3 byte in libc's text
 * (SIGTRAP), or address 0 (SIGSEGV) when the process ignores SIGTRAP. The
 * thread's signal mask during the call blocks every signal except the
 * synchronous ones (SEGV, BUS, FPE, ILL, TRAP, SYS): the kernel resets the
 * process-wide handler of a synchronous signal it must force through a mask
 * (or an ignore), so those stay open; everything else stays queued in the
 * kernel, siginfo intact, and is delivered when the original mask returns.
 */
#include "inject_internal.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

static bool is_stop_signal(int sig) { return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU; }
static bool is_sync_signal(int sig) {
  return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGSYS;
}
/* Raised by the CPU/kernel for this thread, not sent by anyone. */
static bool from_kernel(const siginfo_t* si) { return si->si_code > 0 || si->si_code == SI_KERNEL; }

/*
 * The ptrace event of a stop. From waitpid's status when we have it (status >> 16,
 * authoritative); else from the siginfo, where an event stop carries si_code =
 * signal | event << 8 (the kernel's ptrace_do_notify): positive, low byte the
 * signal. A signal sent with sigqueue or tgkill has a negative si_code (SI_QUEUE,
 * SI_TKILL), and `si_code >> 8` of that is -1, not 0: read as an event, such a
 * signal was resumed with 0 and lost.
 */
static int event_of(int status, const siginfo_t* si) {
  if (status >= 0) return (int)((unsigned)status >> 16);
  return si->si_code > 0 && (si->si_code & 0xff) == si->si_signo ? si->si_code >> 8 : 0;
}

/* Kinds a stop (PTRACE_SEIZE reports group-stops and interrupts as PTRACE_EVENT_STOP); `status` from waitpid, or -1. */
static void classify(pid_t tid, int status, stop_t* st) {
  memset(&st->si, 0, sizeof st->si);
  if (ptrace(PTRACE_GETSIGINFO, tid, 0, &st->si) != 0) {
    st->kind = STOP_GROUP; /* EINVAL: a group-stop without siginfo */
    st->sig = SIGSTOP;
    return;
  }
  int event = event_of(status, &st->si);
  st->sig = st->si.si_signo;
  st->event = event;
  if (event == PTRACE_EVENT_STOP) st->kind = is_stop_signal(st->sig) ? STOP_GROUP : STOP_INTERRUPT;
  else if (event != 0) st->kind = STOP_EVENT;
  else st->kind = STOP_SIGNAL;
}

/*
 * Waits for `tid` (the tracee or one of its auto-attached clones) to enter a
 * ptrace stop. A stop whose notification another waiter in our process took
 * (Node's libuv waits for children it spawned) is found from /proc after a
 * while and classified from its siginfo alone.
 */
int nf_wait_stop(tracee* t, pid_t tid, double deadline, stop_t* st) {
  /* Yield-spin first: a stop or a remote call takes tens of µs, and a sleep
   * costs at least the timer slack (50 µs). Sleep only for long waits. */
  double started = nf_now_us(), traced_since = 0;
  for (;;) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* Peek first: an exit of the process leader must stay for its real parent to reap. */
    if (waitid(P_PID, (id_t)tid, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | __WALL) == -1) {
      if (errno == EINTR) continue;
      st->kind = errno == ECHILD ? STOP_EXITED : STOP_ERROR;
      if (st->kind == STOP_ERROR) nf_fail(t->rep, "waitid(%d): %s", tid, strerror(errno));
      return -1;
    }
    double now = nf_now_us();
    if (si.si_pid == 0) {
      /* Reading /proc costs tens of µs: only once the wait is already long. */
      if (now - started > 1000) {
        char s = nf_thread_state(t->pid, tid);
        if (s == 0) {
          st->kind = STOP_EXITED;
          return -1;
        }
        if (s == 't') {
          if (traced_since == 0) traced_since = now;
          else if (now - traced_since > 1000) {
            classify(tid, -1, st);
            return 0;
          }
        } else {
          traced_since = 0;
        }
      }
      if (now > deadline) {
        st->kind = STOP_TIMEOUT;
        return -1;
      }
      if (now - started < 5000) {
        sched_yield();
      } else {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
      }
      continue;
    }
    if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
      int status;
      if (tid != t->pid) waitpid(tid, &status, __WALL | WNOHANG); /* a thread's zombie is ours to release */
      st->kind = STOP_EXITED;
      return -1;
    }
    int status;
    if (waitpid(tid, &status, __WALL | WNOHANG) <= 0) continue;
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      st->kind = STOP_EXITED;
      return -1;
    }
    if (!WIFSTOPPED(status)) continue;
    classify(tid, status, st);
    return 0;
  }
}

int nf_save_state(pid_t tid, saved_state* s) {
  struct iovec iov = {s->xstate, sizeof s->xstate};
  s->have_xstate = ptrace(PTRACE_GETREGSET, tid, (void*)NT_X86_XSTATE, &iov) == 0;
  s->xstate_len = s->have_xstate ? iov.iov_len : 0;
  /* Without XSAVE: the legacy FXSAVE area (with it, its first 512 bytes are that). */
  if (!s->have_xstate) s->have_fpregs = ptrace(PTRACE_GETFPREGS, tid, 0, &s->fpregs) == 0;
  else memcpy(&s->fpregs, s->xstate, sizeof s->fpregs), s->have_fpregs = 1;
  if (ptrace(PTRACE_GETSIGMASK, tid, (void*)sizeof s->sigmask, &s->sigmask) != 0) return -1;
  return 0;
}

int nf_restore_state(pid_t tid, const saved_state* s) {
  int rc = 0;
  if (s->have_xstate) {
    struct iovec iov = {(void*)s->xstate, s->xstate_len};
    if (ptrace(PTRACE_SETREGSET, tid, (void*)NT_X86_XSTATE, &iov) != 0) rc = -1;
  } else if (s->have_fpregs) {
    if (ptrace(PTRACE_SETFPREGS, tid, 0, &s->fpregs) != 0) rc = -1;
  }
  if (ptrace(PTRACE_SETREGS, tid, 0, &s->regs) != 0) rc = -1;
  if (ptrace(PTRACE_SETSIGMASK, tid, (void*)sizeof s->sigmask, &s->sigmask) != 0) rc = -1;
  return rc;
}

static int poke(pid_t pid, uint64_t addr, const void* buf, size_t len) {
  struct iovec local = {(void*)buf, len}, remote = {(void*)addr, len};
  return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* ------------------------------------------------- the self-restore frame */

/*
 * The kernel's rt_sigframe after its return address (struct ucontext, then
 * siginfo, then the FP state). When a call does not return in time, its
 * return address is pointed at glibc's __restore_rt: the call's own `ret`
 * then lands in rt_sigreturn with this frame, which restores every register,
 * the FP/vector state and the signal mask in one step, with no tracer.
 */
#define UC_SIZE 304      /* uc_flags, uc_link, uc_stack, uc_mcontext, uc_sigmask (8 bytes in the kernel) */
#define SIGINFO_SIZE 128
#ifndef FP_XSTATE_MAGIC1
#define FP_XSTATE_MAGIC1 0x46505853u
#define FP_XSTATE_MAGIC2 0x46505845u
#endif
#define ERESTARTSYS_ 512
#define ERESTARTNOINTR_ 513
#define ERESTARTNOHAND_ 514
#define ERESTART_RESTARTBLOCK_ 516

static size_t fp_len(const saved_state* s) { return s->have_xstate ? s->xstate_len + 4 : sizeof s->fpregs; }

size_t nf_frame_size(const saved_state* s) { return UC_SIZE + SIGINFO_SIZE + 64 + fp_len(s) + 16; }

int nf_write_restore_frame(tracee* t, const saved_state* s) {
  static __thread uint8_t buf[UC_SIZE + SIGINFO_SIZE + 64 + XSTATE_MAX + 16];
  size_t fp_off = ((t->frame + UC_SIZE + SIGINFO_SIZE + 63) & ~63ull) - t->frame;
  size_t len = fp_off + fp_len(s);
  memset(buf, 0, len);
  uint64_t* u = (uint64_t*)buf;
  u[0] = 1 | 2 | 4; /* UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS */
  /* uc_stack (u[2..4]): an invalid ss_flags, so rt_sigreturn's altstack
   * restore fails (it ignores the error) and the altstack stays as it is. */
  u[3] = 3;
  uint64_t* g = u + 5; /* uc_mcontext.gregs, glibc's REG_* order = the kernel's sigcontext */
  struct user_regs_struct r = s->regs;
  /* An interrupted system call restarts as the kernel would restart it when
   * no handler runs (a RESTARTBLOCK call is issued again in full: sigreturn
   * disarms restart_syscall). */
  long long ax = (long long)r.rax;
  if ((long long)r.orig_rax >= 0 && (ax == -ERESTARTSYS_ || ax == -ERESTARTNOINTR_ || ax == -ERESTARTNOHAND_ ||
                                     ax == -ERESTART_RESTARTBLOCK_)) {
    r.rax = r.orig_rax;
    r.rip -= 2;
  }
  uint64_t vals[] = {r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx,
                     r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags};
  memcpy(g, vals, sizeof vals);
  g[18] = (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
  g[23] = t->frame + fp_off; /* fpstate */
  memcpy(buf + 296, &s->sigmask, 8); /* uc_sigmask: the thread's own mask comes back */
  uint8_t* fp = buf + fp_off;
  if (s->have_xstate) {
    memcpy(fp, s->xstate, s->xstate_len);
    /* The signal-frame software bytes (ptrace puts XCR0 in their first word). */
    uint64_t xcr0;
    memcpy(&xcr0, fp + 464, 8);
    uint32_t sw[12] = {FP_XSTATE_MAGIC1, (uint32_t)s->xstate_len + 4, (uint32_t)xcr0, (uint32_t)(xcr0 >> 32),
                       (uint32_t)s->xstate_len};
    memcpy(fp + 464, sw, sizeof sw);
    uint32_t m2 = FP_XSTATE_MAGIC2;
    memcpy(fp + s->xstate_len, &m2, 4);
  } else {
    memcpy(fp, &s->fpregs, sizeof s->fpregs); /* no sw bytes: the kernel restores x87/SSE only */
  }
  return poke(t->pid, t->frame, buf, len);
}

/* ------------------------------------------------------------ clones */

void nf_detach_clones(tracee* t, bool wait_all) {
  for (int i = 0; i < t->n_clones;) {
    stop_t st;
    double deadline = wait_all ? nf_now_us() + 1e6 : 0;
    int w = nf_wait_stop(t, t->clones[i], deadline, &st);
    if (w == 0) ptrace(PTRACE_DETACH, t->clones[i], 0, (void*)(long)(st.kind == STOP_SIGNAL ? st.sig : 0));
    if (w == 0 || st.kind == STOP_EXITED || st.kind == STOP_ERROR) {
      t->clones[i] = t->clones[--t->n_clones];
      t->rep->clones_detached += w == 0;
      continue;
    }
    i++; /* not stopped yet: its first stop comes later (or the tracer's exit detaches it) */
  }
}

static void note_clone(tracee* t) {
  unsigned long child = 0;
  if (ptrace(PTRACE_GETEVENTMSG, t->tid, 0, &child) != 0 || child == 0) return;
  if (t->n_clones < MAX_CLONES) t->clones[t->n_clones++] = (pid_t)child;
  /* Detach it at its first stop, before the thread that made it runs on: a
   * constructor that starts a thread and joins it must not wait on a stop. */
  nf_detach_clones(t, true);
}

/* -------------------------------------------------------- remote calls */

static void deliver_held_after_detach(tracee* t) {
  for (int i = 0; i < t->n_held; i++) syscall(SYS_tgkill, t->pid, t->tid, t->held[i].si_signo);
  t->rep->signals_held += t->n_held;
  t->n_held = 0;
}

/*
 * The call did not return in time. It is never abandoned half-way (it may
 * hold the loader's lock): its return goes to __restore_rt with the frame
 * above, and the thread is detached to finish it.
 */
static call_result leave_running(tracee* t, const saved_state* s, const char* what, int timeout_ms, uint64_t* ret) {
  nf_inject_report* rep = t->rep;
  /* The frame lies above the return slot, which the running call never touches: written now, stopped or not. */
  uint64_t rrt = t->gad.restore_rt && nf_write_restore_frame(t, s) == 0 ? t->gad.restore_rt : 0;
  ptrace(PTRACE_INTERRUPT, t->tid, 0, 0);
  double deadline = nf_now_us() + 1e6;
  for (;;) {
    stop_t st;
    int w = nf_wait_stop(t, t->tid, deadline, &st);
    if (w != 0 && st.kind == STOP_EXITED) {
      rep->target_exited = 1;
      nf_fail(rep, "target %d exited during injection (in %s)", t->pid, what);
      return CALL_EXITED;
    }
    if (w != 0 && st.kind == STOP_TIMEOUT) {
      /* In uninterruptible sleep: rewrite the return address in memory. The
       * frame's mask restores the thread's own when it returns. */
      if (!rrt || poke(t->pid, t->sp, &rrt, 8) != 0) break;
      if (nf_wait_stop(t, t->tid, nf_now_us() + 10000, &st) == 0 && st.kind == STOP_SIGNAL && st.sig == t->trap_sig) {
        t->stopped = true; /* it returned just before the rewrite */
        struct user_regs_struct r;
        if (ptrace(PTRACE_GETREGS, t->tid, 0, &r) == 0 && r.rip == t->trap_rip) {
          *ret = r.rax;
          return CALL_OK;
        }
      }
      rep->left_running = 1;
      nf_fail(rep, "%s did not return within %d ms and thread %d could not be stopped (uninterruptible sleep); it was left to finish the call and puts itself back exactly as it was when the call returns", what, timeout_ms, t->tid);
      return CALL_LEFT_RUNNING;
    }
    if (w != 0) break;
    t->stopped = true;
    if (st.kind == STOP_SIGNAL && st.sig == t->trap_sig && from_kernel(&st.si)) {
      struct user_regs_struct r;
      if (ptrace(PTRACE_GETREGS, t->tid, 0, &r) == 0 && r.rip == t->trap_rip) {
        *ret = r.rax; /* it returned meanwhile */
        return CALL_OK;
      }
    }
    if (st.kind == STOP_INTERRUPT || st.kind == STOP_GROUP) break;
    if (st.kind == STOP_EVENT && st.event == PTRACE_EVENT_CLONE) note_clone(t);
    int pass = st.kind == STOP_SIGNAL && (is_stop_signal(st.sig) || from_kernel(&st.si)) ? st.sig : 0;
    if (st.kind == STOP_SIGNAL && !pass && t->n_held < MAX_HELD_SIGNALS) t->held[t->n_held++] = st.si;
    ptrace(PTRACE_CONT, t->tid, 0, (void*)(long)pass);
    t->stopped = false;
  }
  if (!t->stopped || !rrt || poke(t->pid, t->sp, &rrt, 8) != 0) {
    rep->damaged = 1;
    nf_fail(rep, "%s did not return within %d ms and its return could not be redirected to a self-restore; when it returns the thread traps with no debugger attached: the target is damaged", what, timeout_ms);
    return CALL_LOST;
  }
  /* From here on the call runs with the thread's own mask: signals flow as usual. */
  ptrace(PTRACE_SETSIGMASK, t->tid, (void*)sizeof s->sigmask, &s->sigmask);
  nf_detach_clones(t, true);
  ptrace(PTRACE_DETACH, t->tid, 0, 0);
  t->stopped = false;
  deliver_held_after_detach(t);
  t->tid = 0;
  rep->left_running = 1;
  nf_fail(rep, "%s did not return within %d ms (blocked, e.g. on a lock another thread holds); it was left to finish the call: nothing is abandoned half-way, and the thread puts itself back exactly as it was when the call returns", what, timeout_ms);
  return CALL_LEFT_RUNNING;
}

call_result nf_remote_call(tracee* t, const saved_state* s, uint64_t fn, const uint64_t a[6], int timeout_ms,
                           uint64_t* ret, const char* what) {
  nf_inject_report* rep = t->rep;
  uint64_t ra = t->trap_sig == SIGTRAP ? t->gad.int3 : 0;
  if (!t->ra_written && poke(t->pid, t->sp, &ra, 8)) return nf_fail(rep, "%s: cannot write the target's stack: %s", what, strerror(errno)), CALL_ERROR;
  t->ra_written = true;
  struct user_regs_struct regs = s->regs;
  regs.rip = fn;
  regs.rdi = a[0];
  regs.rsi = a[1];
  regs.rdx = a[2];
  regs.rcx = a[3];
  regs.r8 = a[4];
  regs.r9 = a[5];
  regs.rax = 0;
  regs.orig_rax = (unsigned long long)-1; /* not in a syscall: no restart into our code */
  regs.rsp = t->sp;                       /* rsp % 16 == 8 at function entry */
  regs.eflags &= ~((1ull << 10) | (1ull << 8)); /* DF clear (the ABI), TF clear */
  if (ptrace(PTRACE_SETREGS, t->tid, 0, &regs) != 0) return nf_fail(rep, "%s: PTRACE_SETREGS: %s", what, strerror(errno)), CALL_ERROR;
  int sig = 0; /* the stop we are in (our last trap) is not delivered */
  double deadline = nf_now_us() + timeout_ms * 1000.0;
  for (;;) {
    if (ptrace(PTRACE_CONT, t->tid, 0, (void*)(long)sig) != 0) return nf_fail(rep, "%s: PTRACE_CONT: %s", what, strerror(errno)), CALL_ERROR;
    t->stopped = false;
    sig = 0;
    stop_t st;
    if (nf_wait_stop(t, t->tid, deadline, &st) != 0) {
      if (st.kind == STOP_TIMEOUT) return leave_running(t, s, what, timeout_ms, ret);
      if (st.kind == STOP_EXITED) {
        rep->target_exited = 1;
        nf_fail(rep, "target %d exited during injection (in %s)", t->pid, what);
        return CALL_EXITED;
      }
      return CALL_ERROR;
    }
    t->stopped = true;
    switch (st.kind) {
      case STOP_GROUP:
        /* SIGSTOP & co. stopped the process: our call goes on; at detach the
         * kernel puts the thread back into the group-stop. */
        rep->group_stop = 1;
        continue;
      case STOP_EVENT:
        if (st.event == PTRACE_EVENT_CLONE) note_clone(t);
        continue;
      case STOP_SIGNAL:
        break;
      default:
        continue;
    }
    if (from_kernel(&st.si) && is_sync_signal(st.sig)) {
      struct user_regs_struct r;
      if (ptrace(PTRACE_GETREGS, t->tid, 0, &r) != 0) return nf_fail(rep, "%s: PTRACE_GETREGS: %s", what, strerror(errno)), CALL_ERROR;
      if (st.sig == t->trap_sig && r.rip == t->trap_rip) {
        *ret = r.rax;
        return CALL_OK;
      }
      nf_fail(rep, "%s crashed in the target (SIG%s at rip 0x%llx)", what, sigabbrev_np(st.sig), (unsigned long long)r.rip);
      return CALL_CRASHED;
    }
    if (is_stop_signal(st.sig)) {
      sig = st.sig; /* SIGSTOP cannot be blocked: let it stop the process, as it would have */
      continue;
    }
    /* A synchronous-class signal someone sent (kill -SEGV): held, delivered after. */
    if (t->n_held < MAX_HELD_SIGNALS) t->held[t->n_held++] = st.si;
    else sig = st.sig;
  }
}
