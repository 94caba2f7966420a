/*
 * Nightfuse injector (see include/nightfuse/inject.h).
 *
 * Sequence: check the target and the library -> find dlopen/dlsym/dlerror/
 * dlclose in the target's libc (its /proc/<pid>/maps and the ELF dynamic
 * symbols of that file) -> seize and interrupt every thread -> pick a thread
 * blocked in a system call (it holds no user-space lock), letting the target
 * run and retrying for up to safe_wait_ms -> save its registers and extended
 * FP state -> remote calls on it (dlopen, then dlsym + the entry; dlerror on
 * failure) with return address 0, so each call ends in a SIGSEGV at rip 0 that
 * we catch -> restore everything -> detach every thread.
 *
 * Interrupted system calls: the saved registers hold orig_rax = the syscall and
 * rax = -ERESTART*; restoring them exactly lets the kernel restart the call when
 * the thread resumes. During our own calls orig_rax is -1, so the kernel does
 * not "restart" into our code.
 */
#define _GNU_SOURCE
#include "nightfuse/inject.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

#define MAX_THREADS 4096
#define XSTATE_MAX 16384
#define RTLD_NOW_ 0x00002
#define RTLD_LOCAL_ 0
#define RTLD_DLOPEN_FLAG_ 0x80000000 /* __libc_dlopen_mode wants __RTLD_DLOPEN */

typedef struct {
  pid_t tid;
  bool stopped;     /* in a ptrace stop we caused */
  int pending_sig;  /* a signal we intercepted and owe the thread */
} thread_t;

typedef struct {
  pid_t pid;
  thread_t threads[MAX_THREADS];
  int n;
  nf_inject_report* rep;
} ctx_t;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int fail(nf_inject_report* r, const char* fmt, ...) {
  if (r->error[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ------------------------------------------------------------------ ELF */

static int read_at(int fd, void* buf, size_t len, off_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, (char*)buf + got, len - got, off + (off_t)got);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return 0;
}

int nf_inject_check_elf(const char* path, int want_shared, char* err, int errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, (size_t)errlen, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  Elf64_Ehdr eh;
  int rc = read_at(fd, &eh, sizeof eh, 0);
  close(fd);
  if (rc || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
    snprintf(err, (size_t)errlen, "%s is not an ELF file", path);
    return -1;
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
    snprintf(err, (size_t)errlen, "%s is not x86-64 (ELF class %d, machine %d); only x86-64 is supported", path,
             eh.e_ident[EI_CLASS], eh.e_ident[EI_CLASS] == ELFCLASS64 ? eh.e_machine : ((Elf32_Ehdr*)&eh)->e_machine);
    return -1;
  }
  if (want_shared && eh.e_type != ET_DYN) {
    snprintf(err, (size_t)errlen, "%s is not a shared object (ELF type %d)", path, eh.e_type);
    return -1;
  }
  if (!want_shared && eh.e_type != ET_EXEC && eh.e_type != ET_DYN) {
    snprintf(err, (size_t)errlen, "%s is not an executable (ELF type %d)", path, eh.e_type);
    return -1;
  }
  return 0;
}

typedef struct {
  const char* name;
  uint64_t value; /* st_value, 0 if not found */
  int hidden;     /* found only as a non-default version */
} sym_query;

/* Looks up dynamic symbols by name; prefers the default version (versym without the hidden bit). */
static int elf_dynsyms(const char* path, sym_query* q, int nq, uint64_t* first_load_vaddr, nf_inject_report* r) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(r, "cannot open the target's libc %s: %s", path, strerror(errno));
  int rc = -1;
  Elf64_Shdr* sh = NULL;
  Elf64_Sym* syms = NULL;
  char* strs = NULL;
  uint16_t* vers = NULL;
  Elf64_Ehdr eh;
  if (read_at(fd, &eh, sizeof eh, 0) || eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0) {
    fail(r, "%s: unreadable ELF header or no section headers", path);
    goto out;
  }
  /* lowest PT_LOAD vaddr: the library's base is map start minus this */
  *first_load_vaddr = UINT64_MAX;
  for (int i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    if (read_at(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize))) break;
    if (ph.p_type == PT_LOAD && (ph.p_vaddr & ~0xFFFull) < *first_load_vaddr) *first_load_vaddr = ph.p_vaddr & ~0xFFFull;
  }
  if (*first_load_vaddr == UINT64_MAX) *first_load_vaddr = 0;
  sh = malloc(sizeof(Elf64_Shdr) * eh.e_shnum);
  if (!sh || read_at(fd, sh, sizeof(Elf64_Shdr) * eh.e_shnum, (off_t)eh.e_shoff)) {
    fail(r, "%s: cannot read section headers", path);
    goto out;
  }
  int dynsym = -1, versym = -1;
  for (int i = 0; i < eh.e_shnum; i++) {
    if (sh[i].sh_type == SHT_DYNSYM) dynsym = i;
    if (sh[i].sh_type == SHT_GNU_versym) versym = i;
  }
  if (dynsym < 0 || sh[dynsym].sh_link >= eh.e_shnum) {
    fail(r, "%s has no dynamic symbol table", path);
    goto out;
  }
  Elf64_Shdr* ss = &sh[dynsym];
  Elf64_Shdr* st = &sh[ss->sh_link];
  size_t nsyms = ss->sh_size / sizeof(Elf64_Sym);
  syms = malloc(ss->sh_size);
  strs = malloc(st->sh_size + 1);
  if (!syms || !strs || read_at(fd, syms, ss->sh_size, (off_t)ss->sh_offset) ||
      read_at(fd, strs, st->sh_size, (off_t)st->sh_offset)) {
    fail(r, "%s: cannot read the dynamic symbols", path);
    goto out;
  }
  strs[st->sh_size] = '\0';
  if (versym >= 0 && sh[versym].sh_size >= nsyms * 2) {
    vers = malloc(sh[versym].sh_size);
    if (vers && read_at(fd, vers, sh[versym].sh_size, (off_t)sh[versym].sh_offset)) {
      free(vers);
      vers = NULL;
    }
  }
  for (size_t i = 0; i < nsyms; i++) {
    if (syms[i].st_shndx == SHN_UNDEF || syms[i].st_value == 0 || syms[i].st_name >= st->sh_size) continue;
    if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC && ELF64_ST_TYPE(syms[i].st_info) != STT_GNU_IFUNC) continue;
    const char* name = strs + syms[i].st_name;
    int hidden = vers ? (vers[i] & 0x8000) != 0 : 0;
    for (int k = 0; k < nq; k++) {
      if (strcmp(name, q[k].name) != 0) continue;
      if (q[k].value == 0 || (q[k].hidden && !hidden)) {
        q[k].value = syms[i].st_value;
        q[k].hidden = hidden;
      }
    }
  }
  rc = 0;
out:
  free(sh);
  free(syms);
  free(strs);
  free(vers);
  close(fd);
  return rc;
}

/* Finds the target's libc mapping: its path (as seen through /proc/<pid>/root) and load base. */
static int find_libc(pid_t pid, char* path, size_t pathlen, uint64_t* map_start, nf_inject_report* r) {
  char maps[64];
  snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
  FILE* f = fopen(maps, "re");
  if (!f) return fail(r, "cannot read %s: %s", maps, strerror(errno));
  char line[4352];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long start, end, off;
    char perms[8], file[4096] = "";
    if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %4095[^\n]", &start, &end, perms, &off, file) < 4) continue;
    const char* base = strrchr(file, '/');
    base = base ? base + 1 : file;
    bool is_libc = strncmp(base, "libc.so", 7) == 0 || (strncmp(base, "libc-", 5) == 0 && strstr(base, ".so"));
    if (!is_libc || off != 0) continue;
    snprintf(path, pathlen, "/proc/%d/root%s", pid, file);
    *map_start = start;
    found = 1;
    break;
  }
  fclose(f);
  if (!found) return fail(r, "target %d has no libc.so mapped (statically linked?): there is no dlopen to call in it", pid);
  return 0;
}

/* ------------------------------------------------------------- threads */

static int list_tids(pid_t pid, pid_t* out, int max) {
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/task", pid);
  DIR* d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent* e;
  while ((e = readdir(d)) && n < max) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    out[n++] = (pid_t)atoi(e->d_name);
  }
  closedir(d);
  return n;
}

static thread_t* find_thread(ctx_t* c, pid_t tid) {
  for (int i = 0; i < c->n; i++)
    if (c->threads[i].tid == tid) return &c->threads[i];
  return NULL;
}

/* The scheduler state letter of a thread ('t' = ptrace stop), 0 if it is gone. */
static char thread_state(pid_t pid, pid_t tid) {
  char path[96], buf[512];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' ? rp[2] : 0;
}

/*
 * A stop whose wait notification someone else took: our process may also be
 * the tracee's parent, and any waitpid() in our thread group sees ptrace stops
 * (Node's libuv waits on the children it spawned). Classify it from
 * PTRACE_GETSIGINFO instead.
 */
static void classify_silent_stop(thread_t* t) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  t->stopped = true;
  if (ptrace(PTRACE_GETSIGINFO, t->tid, 0, &si) != 0) return; /* group-stop */
  if ((si.si_code >> 8) == PTRACE_EVENT_STOP) return;         /* our interrupt */
  if (si.si_signo != SIGTRAP && si.si_signo != SIGSTOP) t->pending_sig = si.si_signo;
  else if (si.si_code <= 0) t->pending_sig = si.si_signo;      /* sent by someone */
}

/*
 * Waits for `t` to enter a ptrace stop. Signal-delivery stops are recorded
 * (the signal is owed to the thread and re-sent at detach). Returns 0 when
 * stopped, 1 if the thread/process exited, -1 on timeout or error.
 */
static int wait_stop(ctx_t* c, thread_t* t, double deadline) {
  /* Yield-spin first: a remote call or a stop takes tens of µs, and a sleep
   * costs at least the timer slack (50 µs). Sleep only for long waits. */
  double started = now_us();
  double spin_until = started + 5000;
  double traced_since = 0;
  for (;;) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* Peek first: an exit of the process leader must stay for its real parent to reap. */
    if (waitid(P_PID, (id_t)t->tid, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | __WALL) == -1) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) return 1;
      return fail(c->rep, "waitid(%d): %s", t->tid, strerror(errno));
    }
    if (si.si_pid == 0) {
      double now = now_us();
      /* In a ptrace stop for 2 ms with no notification: it went to another
       * waiter. Reading /proc costs tens of µs, so look only once the wait is
       * already long, never on the fast path. */
      if (now - started > 1000) {
        char st = thread_state(c->pid, t->tid);
        if (st == 0) {
          c->rep->target_exited = t->tid == c->pid;
          return 1;
        }
        if (st == 't') {
          if (traced_since == 0) traced_since = now;
          else if (now - traced_since > 1000) {
            classify_silent_stop(t);
            return 0;
          }
        } else {
          traced_since = 0;
        }
      }
      if (now > deadline) return -1;
      if (now < spin_until) {
        sched_yield();
      } else {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
      }
      continue;
    }
    if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
      c->rep->target_exited = 1;
      if (t->tid != c->pid) {
        int st;
        waitpid(t->tid, &st, __WALL | WNOHANG);
      }
      return 1;
    }
    int st;
    if (waitpid(t->tid, &st, __WALL | WNOHANG) <= 0) continue;
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      c->rep->target_exited = 1;
      return 1;
    }
    if (!WIFSTOPPED(st)) continue;
    t->stopped = true;
    int sig = WSTOPSIG(st);
    int event = st >> 16;
    if (event == 0 && sig != SIGTRAP && sig != SIGSTOP) t->pending_sig = sig;
    return 0;
  }
}

static int seize_all(ctx_t* c, double deadline) {
  pid_t tids[MAX_THREADS];
  for (int round = 0; round < 64; round++) {
    int n = list_tids(c->pid, tids, MAX_THREADS);
    if (n <= 0) {
      c->rep->target_exited = 1;
      return fail(c->rep, "target %d exited (no threads in /proc)", c->pid);
    }
    int added = 0;
    for (int i = 0; i < n; i++) {
      if (find_thread(c, tids[i])) continue;
      if (c->n >= MAX_THREADS) return fail(c->rep, "target has more than %d threads", MAX_THREADS);
      if (ptrace(PTRACE_SEIZE, tids[i], 0, 0) != 0) {
        if (errno == ESRCH) continue; /* thread exited meanwhile */
        return fail(c->rep, "cannot attach to thread %d of %d: %s (is it traced already, or not yours? see ptrace(2) and /proc/sys/kernel/yama/ptrace_scope)",
                    tids[i], c->pid, strerror(errno));
      }
      c->threads[c->n++] = (thread_t){.tid = tids[i], .stopped = false, .pending_sig = 0};
      added++;
    }
    if (added == 0) return 0;
    (void)deadline;
  }
  return fail(c->rep, "threads of %d keep appearing; gave up stopping them", c->pid);
}

/* Interrupts every running thread and waits until all are stopped. */
static int stop_all(ctx_t* c, double deadline) {
  for (int i = 0; i < c->n; i++) {
    thread_t* t = &c->threads[i];
    if (t->stopped || t->tid == 0) continue;
    if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) != 0 && errno == ESRCH) t->tid = 0;
  }
  for (int i = 0; i < c->n; i++) {
    thread_t* t = &c->threads[i];
    if (t->stopped || t->tid == 0) continue;
    int r = wait_stop(c, t, deadline);
    if (r == 1) {
      if (t->tid == c->pid || c->rep->target_exited) return fail(c->rep, "target %d exited during injection", c->pid);
      t->tid = 0; /* a single thread ended */
    } else if (r < 0) {
      return fail(c->rep, "thread %d did not stop in time", t->tid);
    }
  }
  return 0;
}

static void resume_all(ctx_t* c) {
  for (int i = 0; i < c->n; i++) {
    thread_t* t = &c->threads[i];
    if (!t->stopped || t->tid == 0) continue;
    int sig = t->pending_sig;
    t->pending_sig = 0;
    if (ptrace(PTRACE_CONT, t->tid, 0, (void*)(long)sig) == 0) t->stopped = false;
  }
}

static void detach_all(ctx_t* c) {
  /* A thread must be stopped to be detached. */
  if (!c->rep->target_exited) stop_all(c, now_us() + 1e6);
  for (int i = 0; i < c->n; i++) {
    thread_t* t = &c->threads[i];
    if (t->tid == 0) continue;
    ptrace(PTRACE_DETACH, t->tid, 0, (void*)(long)t->pending_sig);
    t->stopped = false;
  }
}

/* ------------------------------------------------------- target memory */

static int poke(pid_t pid, uint64_t addr, const void* buf, size_t len) {
  struct iovec local = {(void*)buf, len}, remote = {(void*)addr, len};
  if (process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len) return 0;
  /* Fall back to word-wise POKEDATA (process_vm_writev needs writable pages, which a stack is). */
  for (size_t off = 0; off < len; off += 8) {
    uint64_t word = 0;
    size_t k = len - off < 8 ? len - off : 8;
    if (k < 8) {
      errno = 0;
      long old = ptrace(PTRACE_PEEKDATA, pid, (void*)(addr + off), 0);
      if (errno) return -1;
      memcpy(&word, &old, 8);
    }
    memcpy(&word, (const char*)buf + off, k);
    if (ptrace(PTRACE_POKEDATA, pid, (void*)(addr + off), (void*)word) != 0) return -1;
  }
  return 0;
}

static void peek_string(pid_t pid, uint64_t addr, char* out, size_t outlen) {
  out[0] = '\0';
  size_t got = 0;
  while (got + 1 < outlen) {
    char buf[64];
    size_t want = sizeof buf;
    /* stay inside one page per read: process_vm_readv fails across an unmapped boundary */
    size_t to_page = 4096 - ((addr + got) & 4095);
    if (want > to_page) want = to_page;
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

/* --------------------------------------------------------- remote call */

typedef struct {
  struct user_regs_struct regs;
  uint8_t xstate[XSTATE_MAX];
  size_t xstate_len;
  struct user_fpregs_struct fpregs;
  int have_xstate, have_fpregs;
} saved_state;

static int save_state(pid_t tid, saved_state* s) {
  if (ptrace(PTRACE_GETREGS, tid, 0, &s->regs) != 0) return -1;
  struct iovec iov = {s->xstate, sizeof s->xstate};
  s->have_xstate = ptrace(PTRACE_GETREGSET, tid, (void*)NT_X86_XSTATE, &iov) == 0;
  s->xstate_len = s->have_xstate ? iov.iov_len : 0;
  if (!s->have_xstate) s->have_fpregs = ptrace(PTRACE_GETFPREGS, tid, 0, &s->fpregs) == 0;
  return 0;
}

static int restore_state(pid_t tid, const saved_state* s) {
  int rc = 0;
  if (s->have_xstate) {
    struct iovec iov = {(void*)s->xstate, s->xstate_len};
    if (ptrace(PTRACE_SETREGSET, tid, (void*)NT_X86_XSTATE, &iov) != 0) rc = -1;
  } else if (s->have_fpregs) {
    if (ptrace(PTRACE_SETFPREGS, tid, 0, &s->fpregs) != 0) rc = -1;
  }
  if (ptrace(PTRACE_SETREGS, tid, 0, &s->regs) != 0) rc = -1;
  return rc;
}

/*
 * Calls fn(a0, a1) on thread t with its stack below `stack_top`; the call
 * returns to address 0 and the resulting SIGSEGV (rip == 0) hands control back.
 * Other signals are passed through to the thread (its handlers run as they
 * would have). Returns 0 with *ret set, -1 on error/timeout/exit.
 */
static int remote_call(ctx_t* c, thread_t* t, const saved_state* saved, uint64_t fn, uint64_t a0, uint64_t a1,
                       uint64_t stack_top, int timeout_ms, uint64_t* ret, const char* what) {
  struct user_regs_struct regs = saved->regs;
  uint64_t sp = (stack_top & ~0xFull) - 8; /* rsp % 16 == 8 at function entry */
  uint64_t zero = 0;
  if (poke(c->pid, sp, &zero, 8)) return fail(c->rep, "%s: cannot write the target's stack: %s", what, strerror(errno));
  regs.rip = fn;
  regs.rdi = a0;
  regs.rsi = a1;
  regs.rax = 0;
  regs.orig_rax = (unsigned long long)-1; /* not in a syscall: no restart into our code */
  regs.rsp = sp;
  regs.eflags &= ~(1ull << 10);           /* DF clear, as the ABI requires */
  if (ptrace(PTRACE_SETREGS, t->tid, 0, &regs) != 0) return fail(c->rep, "%s: PTRACE_SETREGS: %s", what, strerror(errno));
  int sig = 0;
  double deadline = now_us() + timeout_ms * 1000.0;
  for (;;) {
    if (ptrace(PTRACE_CONT, t->tid, 0, (void*)(long)sig) != 0) return fail(c->rep, "%s: PTRACE_CONT: %s", what, strerror(errno));
    t->stopped = false;
    sig = 0;
    int w = wait_stop(c, t, deadline);
    if (w == 1) return fail(c->rep, "target %d exited during injection (in %s)", c->pid, what);
    if (w < 0) {
      /* Take the thread back; the caller restores its registers. */
      ptrace(PTRACE_INTERRUPT, t->tid, 0, 0);
      if (wait_stop(c, t, now_us() + 1e6) != 0) return fail(c->rep, "%s did not return within %d ms and the thread could not be stopped", what, timeout_ms);
      t->pending_sig = 0;
      return fail(c->rep, "%s did not return within %d ms (a lock held by a stopped thread?); the target was restored", what, timeout_ms);
    }
    int pending = t->pending_sig;
    t->pending_sig = 0;
    if (pending == 0) continue; /* interrupt/group stop: keep going */
    if (pending == SIGSEGV) {
      struct user_regs_struct r;
      if (ptrace(PTRACE_GETREGS, t->tid, 0, &r) != 0) return fail(c->rep, "%s: PTRACE_GETREGS: %s", what, strerror(errno));
      if (r.rip == 0) {
        *ret = r.rax;
        return 0;
      }
      return fail(c->rep, "%s crashed in the target (SIGSEGV at rip 0x%llx); the target was restored", what, (unsigned long long)r.rip);
    }
    if (pending == SIGBUS || pending == SIGILL || pending == SIGFPE) {
      return fail(c->rep, "%s raised signal %d in the target; the target was restored", what, pending);
    }
    sig = pending; /* an ordinary signal for the target: deliver it now */
  }
}

/* ---------------------------------------------------------------- main */

static bool in_syscall(const struct user_regs_struct* r) { return (long long)r->orig_rax >= 0; }

int nf_inject_report_size(void) { return (int)sizeof(nf_inject_report); }

int nf_inject(int32_t pid, const char* library, const char* entry, const char* arg, int32_t safe_wait_ms,
              int32_t timeout_ms, nf_inject_report* rep) {
  double t0 = now_us();
  memset(rep, 0, sizeof *rep);
  rep->syscall_nr = -1;
  if (timeout_ms <= 0) timeout_ms = 5000;
  ctx_t* c = calloc(1, sizeof *c);
  saved_state* saved = calloc(1, sizeof *saved);
  if (!c || !saved) {
    free(c);
    free(saved);
    return fail(rep, "out of memory");
  }
  c->pid = pid;
  c->rep = rep;
  int rc = -1;
  bool regs_saved = false;
  thread_t* used = NULL;
  double stop_started = 0;
  char err[256];

  if (pid <= 0) { fail(rep, "invalid pid %d", pid); goto out_nodetach; }
  if (pid == getpid()) { fail(rep, "refusing to inject into the injector's own process"); goto out_nodetach; }
  if (!library || !*library) { fail(rep, "no library given"); goto out_nodetach; }
  char libreal[4096];
  if (!realpath(library, libreal)) { fail(rep, "library %s: %s", library, strerror(errno)); goto out_nodetach; }
  if (access(libreal, R_OK) != 0) { fail(rep, "library %s is not readable: %s", libreal, strerror(errno)); goto out_nodetach; }
  if (nf_inject_check_elf(libreal, 1, err, sizeof err)) { fail(rep, "%s", err); goto out_nodetach; }
  char exe[64];
  snprintf(exe, sizeof exe, "/proc/%d/exe", pid);
  if (kill(pid, 0) != 0 && errno == ESRCH) { fail(rep, "no process %d", pid); goto out_nodetach; }
  /* AT_EACCESS: with our effective credentials. Plain access(2) checks with the real ones and
   * clears a non-root caller's capabilities, so a target holding any (podman hands a non-root
   * container's capabilities to every process as ambient ones) looked untraceable. */
  if (faccessat(AT_FDCWD, exe, R_OK, AT_EACCESS) != 0 && (errno == EACCES || errno == EPERM)) {
    fail(rep, "not permitted to trace process %d (%s on %s): it is not yours, or ptrace is restricted (see ptrace(2), /proc/sys/kernel/yama/ptrace_scope)",
         pid, strerror(errno), exe);
    goto out_nodetach;
  }
  if (nf_inject_check_elf(exe, 0, err, sizeof err)) {
    fail(rep, "target %d: %s", pid, err);
    goto out_nodetach;
  }
  char libc_path[4200];
  uint64_t libc_start = 0, first_vaddr = 0;
  if (find_libc(pid, libc_path, sizeof libc_path, &libc_start, rep)) goto out_nodetach;
  sym_query q[] = {{"dlopen", 0, 0},        {"dlsym", 0, 0},         {"dlerror", 0, 0},      {"dlclose", 0, 0},
                   {"__libc_dlopen_mode", 0, 0}, {"__libc_dlsym", 0, 0}, {"__libc_dlclose", 0, 0}};
  if (elf_dynsyms(libc_path, q, 7, &first_vaddr, rep)) goto out_nodetach;
  uint64_t base = libc_start - first_vaddr;
  bool legacy = q[0].value == 0;
  uint64_t f_dlopen = base + (legacy ? q[4].value : q[0].value);
  uint64_t f_dlsym = base + (q[1].value ? q[1].value : q[5].value);
  uint64_t f_dlerror = q[2].value ? base + q[2].value : 0;
  if ((legacy && q[4].value == 0) || (!q[1].value && !q[5].value)) {
    fail(rep, "the target's libc (%s) exports neither dlopen nor __libc_dlopen_mode / dlsym", libc_path);
    goto out_nodetach;
  }

  /* Resolve the entry in the library's own symbols now, before touching the
   * target: a missing entry is refused without stopping anything, and after
   * dlopen the address is l_addr + st_value (no remote dlsym round trip). */
  sym_query entry_q = {entry ? entry : "", 0, 0};
  if (entry && *entry) {
    uint64_t lib_first_vaddr;
    if (elf_dynsyms(libreal, &entry_q, 1, &lib_first_vaddr, rep)) goto out_nodetach;
    if (entry_q.value == 0) {
      fail(rep, "entry symbol %s not found in %s (not an exported function); the target was not touched", entry, libreal);
      goto out_nodetach;
    }
  }

  double deadline = now_us() + timeout_ms * 1000.0;
  if (seize_all(c, deadline)) goto out;
  /* Find a thread blocked in a system call, letting the target run between tries. */
  double safe_deadline = now_us() + (safe_wait_ms > 0 ? safe_wait_ms * 1000.0 : 0);
  for (;;) {
    rep->attempts++;
    stop_started = now_us();
    if (stop_all(c, deadline)) goto out;
    rep->attach_us = now_us() - stop_started;
    used = NULL;
    thread_t* any = NULL;
    for (int i = 0; i < c->n; i++) {
      thread_t* t = &c->threads[i];
      if (t->tid == 0) continue;
      struct user_regs_struct r;
      if (ptrace(PTRACE_GETREGS, t->tid, 0, &r) != 0) continue;
      if (!any) any = t;
      if (in_syscall(&r) && (!used || t->tid == pid)) {
        used = t;
        rep->syscall_nr = (int)r.orig_rax;
      }
    }
    rep->threads_seen = 0;
    for (int i = 0; i < c->n; i++) rep->threads_seen += c->threads[i].tid != 0;
    if (used) {
      rep->safe_point = 1;
      break;
    }
    if (safe_wait_ms < 0 && now_us() >= safe_deadline) {
      fail(rep, "no thread of %d reached a system call within the wait; not injecting into running user code", pid);
      goto out;
    }
    if (safe_wait_ms >= 0 && now_us() >= safe_deadline) {
      used = any; /* pure user code (e.g. a spin loop): no safe point will come */
      rep->syscall_nr = -1;
      break;
    }
    if (now_us() > deadline) { fail(rep, "timed out looking for a safe point"); goto out; }
    resume_all(c);
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
    if (seize_all(c, deadline)) goto out; /* threads may have been created meanwhile */
  }
  if (!used) { fail(rep, "no thread to run on"); goto out; }
  rep->thread_used = used->tid;
  if (save_state(used->tid, saved)) { fail(rep, "cannot read registers of %d: %s", used->tid, strerror(errno)); goto out; }
  regs_saved = true;

  /* Scratch area on the thread's stack, below the red zone. */
  size_t lib_len = strlen(libreal) + 1, entry_len = entry ? strlen(entry) + 1 : 1, arg_len = arg ? strlen(arg) + 1 : 1;
  uint64_t scratch = (saved->regs.rsp - 256 - lib_len - entry_len - arg_len) & ~0xFull;
  uint64_t a_lib = scratch, a_entry = a_lib + lib_len, a_arg = a_entry + entry_len;
  if (poke(pid, a_lib, libreal, lib_len) || poke(pid, a_entry, entry ? entry : "", entry_len) ||
      poke(pid, a_arg, arg ? arg : "", arg_len)) {
    fail(rep, "cannot write to the target's stack: %s", strerror(errno));
    goto out;
  }
  uint64_t stack_top = scratch - 64;
  uint64_t handle = 0;
  double d0 = now_us();
  int mode = RTLD_NOW_ | RTLD_LOCAL_ | (legacy ? RTLD_DLOPEN_FLAG_ : 0);
  if (remote_call(c, used, saved, f_dlopen, a_lib, (uint64_t)mode, stack_top, timeout_ms, &handle, "dlopen")) goto out;
  rep->dlopen_us = now_us() - d0;
  if (handle == 0) {
    uint64_t msg = 0;
    char text[400] = "";
    if (f_dlerror && remote_call(c, used, saved, f_dlerror, 0, 0, stack_top, timeout_ms, &msg, "dlerror") == 0 && msg)
      peek_string(pid, msg, text, sizeof text);
    fail(rep, "dlopen(%s) failed in the target: %s", libreal, text[0] ? text : "(no dlerror text)");
    goto out;
  }
  rep->handle = handle;
  if (entry && *entry) {
    /* glibc's dlopen handle is the library's struct link_map; its first field, l_addr, is the load bias. */
    uint64_t l_addr = 0, fn = 0;
    struct iovec local = {&l_addr, 8}, remote = {(void*)handle, 8};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) == 8) fn = l_addr + entry_q.value;
    if (fn == 0 && remote_call(c, used, saved, f_dlsym, handle, a_entry, stack_top, timeout_ms, &fn, "dlsym")) goto out;
    if (fn == 0) {
      fail(rep, "entry symbol %s could not be resolved in the target", entry);
      goto out;
    }
    uint64_t result = 0;
    double e0 = now_us();
    if (remote_call(c, used, saved, fn, a_arg, 0, stack_top, timeout_ms, &result, "the entry function")) goto out;
    rep->entry_us = now_us() - e0;
    rep->entry_result = (int32_t)result;
    if (rep->entry_result != 0) {
      fail(rep, "entry %s returned %d", entry, rep->entry_result);
      goto out;
    }
  }
  rc = 0;
out:
  if (regs_saved && used && used->tid && !rep->target_exited) {
    if (!used->stopped) {
      ptrace(PTRACE_INTERRUPT, used->tid, 0, 0);
      wait_stop(c, used, now_us() + 1e6);
    }
    if (restore_state(used->tid, saved) != 0 && rc == 0) {
      rc = fail(rep, "cannot restore the registers of thread %d: %s", used->tid, strerror(errno));
    }
  }
  if (!rep->target_exited) detach_all(c);
  else {
    for (int i = 0; i < c->n; i++)
      if (c->threads[i].tid) ptrace(PTRACE_DETACH, c->threads[i].tid, 0, 0);
  }
  if (stop_started > 0) rep->stopped_us = now_us() - stop_started;
out_nodetach:
  rep->ok = rc == 0;
  rep->total_us = now_us() - t0;
  free(c);
  free(saved);
  return rc;
}
