/*
 * The injector against targets built to hurt it (issue 9, items 1-6): other
 * threads holding libc locks, signals arriving mid-injection, SIGSEGV
 * blocked or ignored, a thread in uninterruptible sleep, threads created all
 * the time, a stale library of the same path (and another mount namespace);
 * and the chosen thread's CPU affinity, which the window narrows, given back.
 * Usage: test_inject_safety [build dir]
 */
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "nightfuse/inject.h"

static char probe[1100], out_path[128];

static int inject_t(pid_t pid, const char* lib, const char* entry, const char* arg, int safe_wait, int timeout, nf_inject_report* r) {
  return nf_inject(pid, lib, entry, arg, safe_wait, timeout, r);
}

/* Injects `lib` and calls `entry(out_path)`; `got` is the first line the entry wrote there ("" if none). */
static int inject_and_read(pid_t pid, const char* lib, const char* entry, char* got, size_t n, nf_inject_report* r) {
  unlink(out_path);
  int rc = inject_t(pid, lib, entry, out_path, 50, 2000, r);
  got[0] = '\0';
  FILE* f = fopen(out_path, "r");
  if (f) {
    if (!fgets(got, (int)n, f)) got[0] = '\0';
    fclose(f);
  }
  return rc;
}

/* Every thread untraced, the process not stopped, and it still answers. */
static void healthy(target* t, const char* what) {
  pid_t first = 0;
  int traced = traced_threads(t->pid, &first);
  CHECK(traced == 0, "%s: no thread left traced (%d, first %d)", what, traced, first);
  char st = state_of(t->pid);
  CHECK(st == 'S' || st == 'R', "%s: not stopped (state %c)", what, st);
  CHECK(echo_ok(t, what), "%s: still answers", what);
}

/* The loader is usable: a dlopen in the target returns (its lock is free). */
static void loader_free(target* t, const char* what) {
  char cmd[1200], answer[300] = "";
  snprintf(cmd, sizeof cmd, "dlopen %s/libunresolved.so", dir); /* fails fast, but only after taking the loader lock */
  int rc = ask(t, cmd, answer, sizeof answer, 4000);
  CHECK(rc == 0 && (strncmp(answer, "dlopen ok", 9) == 0 || strncmp(answer, "dlopen failed", 13) == 0),
        "%s: a dlopen in another thread of the target returns (the loader lock is free): %s", what, rc ? "no answer in 4 s" : answer);
}

/* ---------------------------------------------- item 1: lock-holding threads */

/* Starts a target_hazard mode (argument a1), injects n times, and checks it came through whole.
 * Returns how many of the injections ran on a thread other than the main one. */
static int hazard(const char* mode, const char* a1, const char* what, const char* entry, int timeout_ms, int n) {
  target t;
  CHECK(start_target_fd("target_hazard", mode, a1, NULL, -1, &t) == 0 && read_line(&t, (char[64]){0}, 64, 5000) == 0, "start a target whose %s", what);
  int ok = 0, other = 0;
  for (int i = 0; i < n; i++) {
    nf_inject_report r;
    unlink(out_path);
    if (inject_t(t.pid, probe, entry, out_path, 50, timeout_ms, &r) == 0 && r.ok) ok++;
    else printf("# %s #%d (thread %d): %s\n", mode, i, (int)r.thread_used, r.error);
    other += r.thread_used != 0 && r.thread_used != t.pid;
  }
  CHECK(ok == n, "%d of %d injections succeed while the target's %s (%d)", n, n, what, ok);
  loader_free(&t, mode);
  healthy(&t, mode);
  stop_target(&t);
  return other;
}

static void test_mallinfo(void) { (void)hazard("mallinfo", NULL, "thread loops mallinfo2() with one arena (holding the malloc lock in turns)", "probe_entry", 500, 5); }

static void test_ctor_wait(void) {
  char lib[1200];
  snprintf(lib, sizeof lib, "%s/libs/libslowctor.so", dir);
  (void)hazard("ctorwait", lib, "thread sits in futex inside dlopen (the loader lock held, a constructor waiting for a contended mutex)", "probe_noop", 2000, 5);
}

static void two_counts(target* t, char* a, char* b, size_t len, int gap_us) {
  ask(t, "count", a, len, 2000);
  usleep(gap_us);
  ask(t, "count", b, len, 2000);
}

/* The loader's lock held by another thread (its dlopen waits in a constructor): nothing is taken, the
 * injection fails at once and says why, and it works once the lock is free. */
static void test_loader_busy(void) {
  char lib[1200];
  snprintf(lib, sizeof lib, "%s/libs/libslowctor.so", dir);
  target t;
  CHECK(start_target_fd("target_hazard", "ctorhold", lib, NULL, -1, &t) == 0 && read_line(&t, (char[64]){0}, 64, 5000) == 0,
        "start a target whose loader lock stays held until told");
  nf_inject_report r;
  unlink(out_path);
  double t0 = now_ms();
  int rc = inject_t(t.pid, probe, "probe_entry", out_path, 50, 100, &r);
  double took = now_ms() - t0;
  CHECK(rc != 0 && !r.left_running && !r.damaged && r.thread_used == 0 && r.loader_busy > 0 && r.loader_busy != t.pid &&
            strstr(r.error, "dynamic loader's lock"),
        "held by thread %d: refused in %.0f ms, no thread taken: %s", r.loader_busy, took, r.error);
  pid_t first = 0;
  CHECK(traced_threads(t.pid, &first) == 0, "nothing traced when nf_inject returns (first %d)", first);
  char a[64] = "", b[64] = "", answer[64] = "";
  two_counts(&t, a, b, sizeof a, 30000);
  CHECK(strcmp(a, b) != 0 && strncmp(b, "count ", 6) == 0, "the main thread goes on (%s -> %s)", a, b);
  CHECK(ask(&t, "release", answer, sizeof answer, 2000) == 0, "the loader lock comes free");
  usleep(50000);
  unlink(out_path);
  rc = inject_t(t.pid, probe, "probe_entry", out_path, 50, 2000, &r);
  CHECK(rc == 0 && r.ok && r.loader_busy == 0, "then an injection succeeds: %s", r.error);
  healthy(&t, "after the loader came free");
  stop_target(&t);
}

/* ctorwait where the main thread never waits: another thread is borrowed, and the loader's lock is
 * taken with trylock before our dlopen, so a constructor entering the loader meanwhile cannot wait
 * for a mutex the borrowed thread holds while our dlopen waits for it. */
static void test_ctor_wait_other_thread(void) {
  char lib[1200];
  snprintf(lib, sizeof lib, "%s/libs/libslowctor.so", dir);
  int other = hazard("ctorwait-spin", lib, "main thread spins while another sits in futex inside dlopen (a constructor waiting for a contended mutex)",
                     "probe_noop", 2000, 8);
  /* (after safe_wait the spinning main thread may be used in user code, as documented: not every time) */
  CHECK(other >= 1, "on a thread other than the spinning main one, the trylock path (%d of 8)", other);
}

/* A call that outlives its timeout: left to finish, the thread restores itself. A target with one
 * thread in read(2), so the thread the call runs on is the one whose answers we watch. */
static void test_timeout(void) {
  target t;
  CHECK(start_target("target_sigs", "plain", &t) == 0, "start a single-threaded target waiting in read(2)");
  nf_inject_report r;
  double t0 = now_ms();
  int rc = inject_t(t.pid, probe, "probe_sleep", "700", 50, 100, &r);
  double took = now_ms() - t0;
  CHECK(rc != 0 && r.left_running && !r.damaged && r.thread_used == t.pid && strstr(r.error, "left to finish"),
        "a call blocked past the 100 ms timeout is left to finish, not abandoned (%.0f ms, thread %d): %s", took, (int)r.thread_used, r.error);
  CHECK(!strstr(r.error, "restored"), "and the report does not claim the target was restored");
  pid_t first = 0;
  CHECK(traced_threads(t.pid, &first) == 0, "nothing traced when nf_inject returns (first %d)", first);
  char answer[64] = "";
  CHECK(ask(&t, "still", answer, sizeof answer, 200) != 0, "meanwhile the thread is still inside the call (no answer within 200 ms)");
  answer[0] = '\0';
  CHECK(read_line(&t, answer, sizeof answer, 3000) == 0 && strcmp(answer, "echo still") == 0,
        "then it finishes the call, restores itself and answers what waited (\"%s\")", answer);
  loader_free(&t, "after a call left running");
  healthy(&t, "after a call left running");
  stop_target(&t);
}

typedef struct {
  int fd;
  long lines, bad, probes;
  volatile int stop;
} log_reader;

/* Drains the busy target's stdio stream and checks it line by line. */
static void* read_log(void* p) {
  log_reader* lr = p;
  char buf[65536], line[256];
  size_t ll = 0;
  long next = 0;
  for (;;) {
    ssize_t n = read(lr->fd, buf, sizeof buf);
    if (n <= 0) return NULL;
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] != '\n') {
        if (ll < sizeof line - 1) line[ll++] = buf[i];
        continue;
      }
      line[ll] = '\0';
      ll = 0;
      long k;
      if (strcmp(line, "PROBE") == 0) lr->probes++;
      else if (sscanf(line, "W:%08ld:", &k) == 1 && k == next && strlen(line) == 90) next++, lr->lines++;
      else lr->bad++;
    }
  }
}

static void test_busy(void) {
  int pfd[2];
  if (pipe(pfd) != 0) {
    CHECK(0, "pipe: %s", strerror(errno));
    return;
  }
  target t;
  int started = start_target_fd("target_hazard", "busy", NULL, NULL, pfd[1], &t) == 0;
  close(pfd[1]);
  log_reader lr = {.fd = pfd[0]};
  pthread_t reader;
  pthread_create(&reader, NULL, read_log, &lr);
  char line[64] = "";
  CHECK(started && read_line(&t, line, sizeof line, 5000) == 0,
        "start a target: main spinning, one thread in mmap under the malloc lock, one in write under a FILE lock, one reading commands");
  usleep(50000);
  int ok = 0, on_reader = 0;
  pid_t reader_tid = 0;
  for (int i = 0; i < 6; i++) {
    nf_inject_report r;
    /* probe_log takes the stream's lock, which the writer holds while blocked
     * on a pipe only our read_log drains: on a loaded machine that chain can
     * take longer than 500 ms (seen: 4 of 72 runs with 12 in parallel under
     * ASan, the call correctly left to finish), so the call gets 5 s. */
    if (inject_t(t.pid, probe, "probe_log", "", 20, 5000, &r) == 0 && r.ok) ok++;
    else printf("# busy #%d: %s (thread %d, syscall %d)\n", i, r.error, r.thread_used, r.syscall_nr);
    if (i == 0) reader_tid = r.thread_used;
    on_reader += r.thread_used == reader_tid && r.safe_point && r.syscall_nr == SYS_read;
  }
  CHECK(ok == 6, "6 of 6 injections succeed (%d)", ok);
  CHECK(on_reader == 6, "every call ran on the thread waiting in read(2), never on one inside mmap/write (%d of 6)", on_reader);
  loader_free(&t, "busy target");
  char a[64] = "", b[64] = "";
  ask(&t, "count", a, sizeof a, 2000);
  usleep(50000);
  ask(&t, "count", b, sizeof b, 2000);
  CHECK(strcmp(a, b) != 0 && strncmp(a, "count ", 6) == 0 && strncmp(b, "count ", 6) == 0, "the lock-holding threads keep going (%s -> %s)", a, b);
  healthy(&t, "busy target");
  stop_target(&t);
  pthread_join(reader, NULL);
  close(pfd[0]);
  CHECK(lr.bad == 0 && lr.lines > 0 && lr.probes == ok, "the stdio stream is intact: %ld lines in order, %ld PROBE lines, %ld bad", lr.lines, lr.probes, lr.bad);
}

/* ------------------------------------------------ item 2: signals meanwhile */

typedef struct {
  pid_t pid, tid;
  int sig;
  int delay_ms;
  int sig2, delay2_ms;
} delayed_signal;

/* Waits (2 s at most) until the target's main thread sleeps in the injected entry. */
static void wait_in_entry(pid_t pid) {
  char path[64], buf[64];
  snprintf(path, sizeof path, "/proc/%d/syscall", pid);
  for (int i = 0; i < 2000; i++) {
    FILE* f = fopen(path, "r");
    int in = 0;
    if (f) {
      in = fgets(buf, sizeof buf, f) && (strncmp(buf, "230 ", 4) == 0 || strncmp(buf, "35 ", 3) == 0); /* clock_nanosleep, nanosleep */
      fclose(f);
    }
    if (in) return;
    usleep(1000);
  }
}

static void* send_later(void* p) {
  delayed_signal* d = p;
  wait_in_entry(d->pid);
  usleep((useconds_t)d->delay_ms * 1000);
  if (d->tid) syscall(SYS_tgkill, d->pid, d->tid, d->sig);
  else kill(d->pid, d->sig);
  if (d->sig2) {
    usleep((useconds_t)d->delay2_ms * 1000);
    kill(d->pid, d->sig2);
  }
  return NULL;
}

static int counts(target* t, int* usr1, int* cont, int* rt, int* errors) {
  char a[128];
  if (ask(t, "count", a, sizeof a, 3000) != 0) return -1;
  return sscanf(a, "usr1 %d cont %d rt %d errors %d", usr1, cont, rt, errors) == 4 ? 0 : -1;
}

/* Injects with an entry that sleeps 100 ms while `d` sends its signal(s) into it. */
static int inject_with_signal(target* t, delayed_signal* d, nf_inject_report* r) {
  pthread_t th;
  pthread_create(&th, NULL, send_later, d);
  int rc = inject_t(t->pid, probe, "probe_sleep", "100", 50, 2000, r);
  pthread_join(th, NULL);
  return rc;
}

static void test_signals(void) {
  target t;
  CHECK(start_target("target_sigs", "plain", &t) == 0, "start a target with counting handlers");
  char before[200] = "", after[200] = "";
  ask(&t, "sigstate", before, sizeof before, 2000);
  int u0, c0, rt0, e0, u1, c1, rt1, e1;
  nf_inject_report r;

  /* SIGUSR1 to the very thread the calls run on, mid-call. */
  counts(&t, &u0, &c0, &rt0, &e0);
  delayed_signal d1 = {t.pid, t.pid, SIGUSR1, 5, 0, 0};
  CHECK(inject_with_signal(&t, &d1, &r) == 0, "inject while SIGUSR1 is sent to its thread: %s", r.error);
  usleep(20000);
  counts(&t, &u1, &c1, &rt1, &e1);
  CHECK(u1 == u0 + 1 && e1 == 0, "SIGUSR1 delivered once, after; read(2) restarted (usr1 %d -> %d, errors %d)", u0, u1, e1);

  /* SIGSTOP mid-call: the process ends stopped, as it would have. */
  delayed_signal d2 = {t.pid, 0, SIGSTOP, 5, 0, 0};
  CHECK(inject_with_signal(&t, &d2, &r) == 0, "inject while SIGSTOP arrives: %s", r.error);
  usleep(20000);
  char st = state_of(t.pid);
  CHECK(st == 'T', "the target is left stopped (state %c, group_stop %d)", st, r.group_stop);
  CHECK(tracer_pid(t.pid) == 0, "and not traced");
  kill(t.pid, SIGCONT);
  usleep(20000);
  counts(&t, &u0, &c0, &rt0, &e0);
  CHECK(c0 == c1 + 1, "SIGCONT continues it and its handler runs (cont %d -> %d)", c1, c0);
  healthy(&t, "after SIGSTOP/SIGCONT");

  /* SIGSTOP then SIGCONT, both mid-call: it ends running, the handler ran once. */
  delayed_signal d3 = {t.pid, 0, SIGSTOP, 5, SIGCONT, 10};
  CHECK(inject_with_signal(&t, &d3, &r) == 0, "inject while SIGSTOP and SIGCONT arrive: %s", r.error);
  usleep(20000);
  counts(&t, &u1, &c1, &rt1, &e1);
  CHECK(c1 == c0 + 1 && state_of(t.pid) != 'T', "running again, SIGCONT handled once (cont %d -> %d, state %c)", c0, c1, state_of(t.pid));

  /* A flood of queued real-time signals across many injections: none lost. One
   * that reached the chosen thread between SEIZE and the interrupt (si_code
   * SI_QUEUE) was once taken for a ptrace event and resumed with 0: 1 lost in
   * 20,000 in 2 of 6 runs under ASan; 3,000 caught it only now and then. */
  enum { N_RT = 20000 };
  pid_t sender = fork();
  if (sender == 0) {
    union sigval v = {0};
    for (int i = 0; i < N_RT; i++)
      while (sigqueue(t.pid, SIGRTMIN, v) != 0)
        if (errno == EAGAIN) sched_yield();
        else _exit(1);
    _exit(0);
  }
  int injections = 0, inj_ok = 0, done = 0;
  while (!done || injections < 20) {
    inj_ok += inject_t(t.pid, probe, "probe_noop", "", 50, 2000, &r) == 0;
    injections++;
    if (!done && waitpid(sender, NULL, WNOHANG) == sender) done = 1;
  }
  usleep(50000);
  counts(&t, &u0, &c0, &rt0, &e0);
  if (rt0 != N_RT) { /* late, or lost? a second look tells */
    int early = rt0;
    usleep(1000000);
    counts(&t, &u0, &c0, &rt0, &e0);
    printf("# real-time signals handled: %d after 50 ms, %d after 1 s more (state %c)\n", early, rt0, state_of(t.pid));
  }
  CHECK(inj_ok == injections, "%d of %d injections succeed under a signal flood", inj_ok, injections);
  CHECK(rt0 == N_RT && e0 == 0, "every queued signal delivered exactly once (%d of %d), no read(2) error (%d)", rt0, N_RT, e0);
  ask(&t, "sigstate", after, sizeof after, 2000);
  CHECK(strcmp(before, after) == 0 && before[0], "the thread's mask and the handlers are as before:\n#   %s\n#   %s", before, after);
  healthy(&t, "signals target");
  stop_target(&t);
}

/* ------------------------------------- item 3: SIGSEGV blocked or ignored */

static void test_segv_state(const char* mode) {
  target t;
  CHECK(start_target("target_sigs", mode, &t) == 0, "start a target (%s)", mode);
  char before[200] = "", after[200] = "";
  ask(&t, "sigstate", before, sizeof before, 2000);
  nf_inject_report r;
  int ok = 0;
  for (int i = 0; i < 3; i++) ok += inject_t(t.pid, probe, "probe_noop", "", 50, 2000, &r) == 0;
  CHECK(ok == 3, "%s: 3 injections succeed (trap signal %d): %s", mode, r.trap_signal, r.error);
  ask(&t, "sigstate", after, sizeof after, 2000);
  CHECK(strcmp(before, after) == 0 && before[0], "%s: mask and SEGV/TRAP handlers unchanged:\n#   %s\n#   %s", mode, before, after);
  healthy(&t, mode);
  stop_target(&t);
}

/* ------------------------------------ item 4: a thread that cannot stop */

static pid_t second_thread(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = opendir(path);
  pid_t tid = 0;
  struct dirent* e;
  while (d && (e = readdir(d)))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && atoi(e->d_name) != pid) tid = atoi(e->d_name);
  if (d) closedir(d);
  return tid;
}

static void test_dstate(void) {
  target t;
  CHECK(start_target("target_dstate", "2000", &t) == 0, "start a target whose thread waits in vfork (D state, 2 s at a time)");
  pid_t v = second_thread(t.pid);
  char s = '?';
  for (int i = 0; i < 200 && (s = thread_state_of(t.pid, v)) != 'D'; i++) usleep(2000);
  CHECK(s == 'D', "thread %d is in uninterruptible sleep (state %c, /proc/%d/task/%d/stat)", v, s, t.pid, v);
  char a[64] = "", b[64] = "";
  ask(&t, "count", a, sizeof a, 2000);
  memcpy(b, a, sizeof b);
  nf_inject_report r;
  unlink(out_path);
  int rc = inject_t(t.pid, probe, "probe_entry", out_path, 50, 500, &r);
  CHECK(rc == 0 && r.ok && r.thread_used == t.pid, "injection runs on the main thread, not stopping the D-state thread: %s", r.error);
  pid_t first = 0;
  int traced = traced_threads(t.pid, &first);
  CHECK(traced == 0, "no thread traced when nf_inject returns (%d, first %d)", traced, first);
  for (int i = 0; i < 200 && strcmp(a, b) == 0; i++) {
    usleep(20000);
    ask(&t, "count", b, sizeof b, 2000);
  }
  CHECK(strcmp(a, b) != 0 && strncmp(b, "count ", 6) == 0, "the vfork thread goes on after its sleep (%s -> %s, state %c)", a, b, thread_state_of(t.pid, v));
  healthy(&t, "D-state target");
  stop_target(&t);
}

/* ------------------------------------------------ item 6: threads appearing */

static void test_cloner(void) {
  target t;
  CHECK(start_target("target_cloner", NULL, &t) == 0, "start a target that creates threads all the time");
  char a[64] = "", b[64] = "";
  ask(&t, "count", a, sizeof a, 2000);
  int ok = 0, clones = 0, wrote = 0;
  nf_inject_report r;
  for (int i = 0; i < 10; i++) {
    unlink(out_path);
    if (inject_t(t.pid, probe, "probe_thread", out_path, 50, 2000, &r) == 0) ok++;
    else printf("# cloner #%d: %s\n", i, r.error);
    clones += r.clones_detached;
    wrote += file_has(out_path, "thread");
  }
  CHECK(ok == 10, "10 of 10 injections succeed while threads come and go (%d)", ok);
  CHECK(wrote == 10 && clones >= 10, "the entry's own thread ran each time (%d), auto-attached and detached (%d)", wrote, clones);
  pid_t first = 0;
  CHECK(traced_threads(t.pid, &first) == 0, "no thread left traced (first %d)", first);
  usleep(20000);
  ask(&t, "count", b, sizeof b, 2000);
  CHECK(strcmp(a, b) != 0 && strncmp(b, "count ", 6) == 0, "the cloner goes on (%s -> %s)", a, b);
  healthy(&t, "cloner target");
  stop_target(&t);
}

/* ------------------------------------- item 5: what the target really loaded */

static int copy_file(const char* from, const char* to) {
  char cmd[2600];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s.tmp' && mv '%s.tmp' '%s'", from, to, to, to);
  return system(cmd);
}

static void test_stale(void) {
  char tmp[128], lib[200], a[1200], b[1200];
  snprintf(tmp, sizeof tmp, "/tmp/nf-stale-%d", (int)getpid());
  mkdir(tmp, 0700);
  snprintf(lib, sizeof lib, "%s/libstale.so", tmp);
  snprintf(a, sizeof a, "%s/libs/libstale_a.so", dir);
  snprintf(b, sizeof b, "%s/libs/libstale_b.so", dir);
  target t;
  CHECK(start_target("target_sigs", "plain", &t) == 0 && copy_file(a, lib) == 0, "start a target, build A at the path");
  char cmd[300], answer[200] = "";
  snprintf(cmd, sizeof cmd, "dlopen %s", lib);
  CHECK(ask(&t, cmd, answer, sizeof answer, 3000) == 0 && strcmp(answer, "dlopen ok") == 0, "the target loads build A: %s", answer);
  CHECK(copy_file(b, lib) == 0, "build B replaces the file at the path (new inode)");
  nf_inject_report r;
  char got[64];
  int rc = inject_and_read(t.pid, lib, "stale_entry", got, sizeof got, &r);
  CHECK(rc == 0 && strcmp(got, "stale_entry:A") == 0, "the entry ran is A's stale_entry, the code the target has (ran: \"%s\"): %s", got, r.error);
  CHECK(r.same_file == 0, "and the report says the target maps another file than the one at the path (same_file %d)", r.same_file);
  healthy(&t, "stale target");
  stop_target(&t);

  /* Another mount namespace: the target sees B at the path, we see A. */
  copy_file(a, lib);
  pid_t child = fork();
  if (child == 0) {
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 || mount(b, lib, NULL, MS_BIND, NULL) != 0) _exit(3);
    for (;;) pause();
  }
  usleep(100000);
  rc = inject_and_read(child, lib, "stale_entry", got, sizeof got, &r);
  CHECK(rc == 0 && strcmp(got, "stale_entry:B") == 0 && r.same_file == 0,
        "another mount namespace: the entry of the file the target sees ran (\"%s\", same_file %d): %s", got, r.same_file, r.error);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  unlink(lib);
  rmdir(tmp);
}

/* ---------- the window's CPU pin: the chosen thread's affinity as before */

static int cpus_of(pid_t tid, cpu_set_t* s) { return sched_getaffinity(tid, sizeof *s, s); }

/* Injects 5 times with the caller on `caller_cpu` (-1: anywhere) into a target whose thread is set
 * to `mask`; its affinity must be `mask` again afterwards, each time. */
static void affinity_case(const char* what, int caller_cpu, const cpu_set_t* mask) {
  cpu_set_t mine, one, got;
  cpus_of(0, &mine);
  if (caller_cpu >= 0) {
    CPU_ZERO(&one);
    CPU_SET(caller_cpu, &one);
    sched_setaffinity(0, sizeof one, &one);
  }
  target t;
  CHECK(start_target("target_sigs", "plain", &t) == 0, "%s: start a target waiting in read(2)", what);
  CHECK(sched_setaffinity(t.pid, sizeof *mask, mask) == 0, "%s: set its affinity: %s", what, strerror(errno));
  int ok = 0, same = 0;
  nf_inject_report r;
  for (int i = 0; i < 5; i++) {
    ok += inject_t(t.pid, probe, "probe_noop", "", 50, 2000, &r) == 0;
    same += cpus_of(t.pid, &got) == 0 && CPU_EQUAL(&got, mask);
  }
  CHECK(ok == 5, "%s: 5 of 5 injections succeed (%d): %s", what, ok, r.error);
  CHECK(same == 5, "%s: its CPU affinity is as before after each (%d of 5; now %d CPUs, was %d)", what, same, CPU_COUNT(&got), CPU_COUNT(mask));
  healthy(&t, what);
  stop_target(&t);
  sched_setaffinity(0, sizeof mine, &mine);
}

static void test_affinity(void) {
  cpu_set_t all, one, others;
  cpus_of(0, &all);
  affinity_case("affinity: every CPU of ours", -1, &all);
  if (CPU_COUNT(&all) > 1) {
    /* That the narrowing is real, so the case above shows it undone. */
    target t;
    CHECK(start_target("target_sigs", "plain", &t) == 0, "affinity: start a target waiting in read(2)");
    nf_inject_report r;
    char got[32];
    int rc = inject_and_read(t.pid, probe, "probe_cpus", got, sizeof got, &r);
    CHECK(rc == 0 && strcmp(got, "cpus=1") == 0, "affinity: during the window the thread runs on the tracer's CPU alone (%s): %s", got, r.error);
    stop_target(&t);
  }
  int first = -1, second = -1;
  for (int c = 0; c < CPU_SETSIZE && second < 0; c++)
    if (CPU_ISSET(c, &all)) *(first < 0 ? &first : &second) = c;
  if (second < 0) {
    printf("# affinity: one CPU only, the narrowed cases are not run\n");
    return;
  }
  CPU_ZERO(&one);
  CPU_SET(second, &one);
  affinity_case("affinity: the target on one CPU, the caller on another", first, &one);
  affinity_case("affinity: the target on one CPU, the caller on the same", second, &one);
  others = all;
  CPU_CLR(first, &others);
  affinity_case("affinity: the caller's CPU not among the target's", first, CPU_COUNT(&others) > 1 ? &others : &one);
}

int main(int argc, char** argv) {
  find_build_dir(argc, argv);
  snprintf(probe, sizeof probe, "%s/libprobe.so", dir);
  snprintf(out_path, sizeof out_path, "/tmp/nf-safety-%d", (int)getpid());
  signal(SIGPIPE, SIG_IGN);
  const char* only = argc > 2 ? argv[2] : NULL;
#define RUN(name, call) if (!only || strstr(only, name)) call /* only: a comma-separated list */
  RUN("mallinfo", test_mallinfo());
  RUN("ctorwait", test_ctor_wait());
  RUN("ctorspin", test_ctor_wait_other_thread());
  RUN("timeout", test_timeout());
  RUN("loaderbusy", test_loader_busy());
  RUN("busy", test_busy());
  RUN("signals", test_signals());
  RUN("segv", (test_segv_state("segv-blocked"), test_segv_state("segv-ignored"), test_segv_state("trap-ignored")));
  RUN("dstate", test_dstate());
  RUN("cloner", test_cloner());
  RUN("stale", test_stale());
  RUN("affinity", test_affinity());
  unlink(out_path);
  return finish();
}
