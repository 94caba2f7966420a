/*
 * The merge runtime against the hazards of issue 9 (items 7-13): faults at
 * every isolation level, a fault in host code called back by a callee, a
 * fault with malloc's lock held, leaks over 1,000 LOAD/fault/UNLOAD cycles,
 * the SIGURG start, slot reuse under a pinned call, hand-offs under load, a
 * failed output grow, over-long names and paths.
 * Usage: test_merge_safety [build dir] [only,...]   (--lockfault: internal)
 * Env: NF_CYCLES (1000); NF_START_BY_ENTRY=1 starts the runtime through its
 * entry instead of SIGURG (ThreadSanitizer cannot follow a thread created in
 * a signal handler).
 */
#include "merge_host.h"

#include <malloc.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static const char* ISO[] = {"inline", "stack", "thread"};
static void* rt;
static int (*start_fn)(const char*);
static char root[128];

/* ------------------------------------------------------ item 9: SIGURG */

typedef struct {
  int pipe_w;
} urg_args;

static void* urg_then_write(void* p) {
  urg_args* a = p;
  usleep(50000);
  syscall(SYS_tgkill, getpid(), getpid(), SIGURG); /* main is in read(2) now */
  usleep(200000);
  if (write(a->pipe_w, "go", 2) != 2) return NULL;
  return NULL;
}

static void test_start_signal(void) {
  /* Loaded as the launcher loads it: the constructor arms SIGURG. */
  CHECK(start_runtime(&rt, &start_fn) == 0, "load the merge runtime with FAAS_ROOT_PATH_FOR_IPC set");
  _Atomic int* refused = dlsym(rt, "nightfuse_merge_start_refused");
  errno = 4242;
  raise(SIGURG); /* the main thread is in user code (raise), not in read(2) */
  int e = errno;
  struct pollfd p = {listen_fd, POLLIN, 0};
  int connected = poll(&p, 1, 300);
  CHECK(connected == 0, "SIGURG outside read(2) starts nothing (no connection within 300 ms; refused %d)", refused ? atomic_load(refused) : -1);
  CHECK(e == 4242, "the handler leaves errno as it was (%d)", e);
  if (connected > 0) { /* the old runtime connects here: take it, to go on */
    CHECK(accept_runtime(1000) == getpid(), "(a connection came anyway)");
    return;
  }
  int pfd[2];
  if (pipe(pfd) != 0) return;
  urg_args a = {pfd[1]};
  pthread_t t;
  pthread_create(&t, NULL, urg_then_write, &a);
  char buf[8];
  ssize_t n = read(pfd[0], buf, sizeof buf); /* SIGURG lands here */
  pthread_join(t, NULL);
  CHECK(n == 2 && memcmp(buf, "go", 2) == 0, "the interrupted read(2) resumed and returned its data (%zd)", n);
  CHECK(accept_runtime(2000) == getpid(), "SIGURG in read(2) starts the control thread: HELLO");
  close(pfd[0]);
  close(pfd[1]);
}

/* ---------------------------------------------- item 13: no truncation */

/* base/ddd.../leaf, exactly `total` bytes long (components of at most 200). */
static void make_path(char* out, const char* base, size_t total, const char* leaf) {
  size_t need = total - strlen(leaf) - 1;
  strcpy(out, base);
  while (strlen(out) < need) {
    size_t room = need - strlen(out) - 1, k = room > 200 ? 200 : room;
    if (room - k == 1) k--; /* never leave room for an empty component */
    size_t len = strlen(out);
    out[len] = '/';
    memset(out + len + 1, 'd', k);
    out[len + 1 + k] = '\0';
  }
  strcat(out, "/");
  strcat(out, leaf);
}

static void test_long_strings(void) {
  char msg[512], name[400];
  memset(name, 'n', 300);
  name[300] = '\0';
  int rc = load(name, "libs/libcallees.so", 0, 1, msg);
  CHECK(rc == -36 && strstr(msg, "too long"), "a 300-byte callee name is refused, not truncated: %d %s", rc, msg);
  /* A path whose first 1023 bytes name a real library: truncated, it would load that one. */
  char base[200], path[1400], cmd[3000];
  snprintf(base, sizeof base, "/tmp/nf-trunc-%d", (int)getpid());
  make_path(path, base, 1023, "libx.so");
  snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\" && cp '%s/libs/libcallees.so' '%s'", path, dir, path);
  int made = system(cmd) == 0;
  char longer[1500];
  snprintf(longer, sizeof longer, "%s.but-longer", path);
  rc = load_path("Trunc", longer, 0, 1, msg);
  CHECK(made && strlen(path) == 1023 && rc != 0, "a %zu-byte path whose 1023-byte prefix is a library does not load that library: %d %s", strlen(longer), rc, msg);
  if (rc == 0) unload("Trunc", msg);
  rc = load_path("Trunc", path, 0, 1, msg);
  CHECK(rc == 0, "the 1023-byte path itself loads: %s", msg);
  unload("Trunc", msg);
  char big[5000];
  memset(big, 'p', sizeof big - 1);
  big[0] = '/';
  big[sizeof big - 1] = '\0';
  rc = load_path("Huge", big, 0, 1, msg);
  CHECK(rc == -36 && strstr(msg, "too long"), "a path over %d bytes is refused: %s", NF_MP_MAX_PATH, msg);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  if (system(cmd) != 0) printf("# could not remove %s\n", base);
}

/* -------------------------------------------- item 12: a failed grow */

static void test_bigout(void) {
  char msg[512];
  for (int iso = 0; iso < 3; iso++) {
    CHECK(load("Big", "libs/libcallees.so", iso, 1, msg) == 0 && route("Big", 1) == 0, "LOAD+ROUTE Big (%s)", ISO[iso]);
    CHECK(call_is("Big", "fine", "fine"), "%s: a normal output", ISO[iso]);
    CHECK(call_fails("Big", "bigout"), "%s: an output that cannot be allocated fails the call", ISO[iso]);
    CHECK(call_is("Big", "after", "after"), "%s: the next call is whole again", ISO[iso]);
    uint64_t c = 0, f = 0, fl = 0;
    int routed = 0;
    stats("Big", &c, &f, &fl, &routed);
    CHECK(f == 1 && fl == 0 && routed == 1, "%s: counted as a failure, not a fault (failures %llu)", ISO[iso], (unsigned long long)f);
    unload("Big", msg);
  }
}

/* ------------------------------- faults at every level; item 7 (host) */

static void test_fault_matrix(void) {
  const char* kinds[] = {"segv", "bus", "fpe", "ill", "overflow"};
  const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGSEGV};
  char msg[512];
  for (int iso = 0; iso < 3; iso++) {
    for (int k = 0; k < 5; k++) {
      char name[32];
      snprintf(name, sizeof name, "F%d%d", iso, k);
      int before = atomic_load(&faults_seen);
      int ok = load(name, "libs/libcallees.so", iso, 1, msg) == 0 && route(name, 1) == 0 && call_is(name, "ok", "ok");
      int contained = call_fails(name, kinds[k]);
      for (int i = 0; i < 200 && atomic_load(&faults_seen) == before; i++) usleep(1000);
      pthread_mutex_lock(&lmu);
      int sig = last_fault_signal, flags = last_fault_flags;
      pthread_mutex_unlock(&lmu);
      char want[64];
      snprintf(want, sizeof want, "ipc:%s:ok", name);
      int after = call_is(name, "ok", want);
      int refused = route(name, 1) != 0;
      int unloaded = unload(name, msg) == 0;
      CHECK(ok && contained && sig == sigs[k] && (flags & NF_MP_FAULT_IN_CALLEE) && after && refused && unloaded,
            "%s / %s: only that call fails (%d), FAULT signal %d in callee code (%d), route off for good (%d, %d), UNLOAD (%d) %s",
            ISO[iso], kinds[k], contained, sig, flags, after, refused, unloaded, unloaded ? "" : msg);
    }
  }
}

/* A fault in host code that a callee called back into is not the callee's: not contained. */
static void test_host_fault(void) {
  char msg[512];
  CHECK(load("Host", "libs/libcallees.so", 0, 1, msg) == 0 && route("Host", 1) == 0, "LOAD+ROUTE Host (inline)");
  CHECK(call_is("Host", "call:Other:x", "ipc:Other:x"), "the callee's nested call goes out over the host's IPC");
  pid_t child = fork();
  if (child == 0) {
    const char* out;
    size_t ol;
    int rc = host_invoke("Host", "call:HostCrash:x", 16, &out, &ol);
    _exit(rc == -1 ? (host_in_ipc ? 3 : 4) : 5); /* only reached if the fault was swallowed */
  }
  int st = 0;
  waitpid(child, &st, 0);
  /* Died of it (under the sanitizers, their SEGV report exits 1): the call never returned. */
  int returned = WIFEXITED(st) && WEXITSTATUS(st) >= 3 && WEXITSTATUS(st) <= 5;
  CHECK(!returned && (WIFSIGNALED(st) ? WTERMSIG(st) == SIGSEGV : WEXITSTATUS(st) != 0),
        "a fault in the host during the callee's nested call kills the worker as it would unmerged, not unwound through host code (%s %d)",
        WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
  unload("Host", msg);
}

/* A thread-isolated callee faults with malloc's lock held: the faulting call
 * must still return at once (the worker is then replaced; this process may
 * deadlock later, so the case runs in a child of its own). */
static int lockfault_child(void) {
  char msg[512];
  mallopt(M_ARENA_MAX, 1); /* one arena: the faulted thread's own exit needs the lock it still holds */
  if (listen_control() != 0 || start_runtime(&rt, &start_fn) != 0 || start_fn(sock_path) != 0 || accept_runtime(3000) < 0) return 10;
  if (load("Lock", "libs/libcallees.so", NF_ISO_THREAD, 1, msg) != 0 || route("Lock", 1) != 0 || !call_is("Lock", "ok", "ok")) return 11;
  double t0 = now_ms();
  const char* out;
  size_t ol;
  int rc = host_invoke("Lock", "mallocfault", 11, &out, &ol);
  char line[128];
  int n = snprintf(line, sizeof line, "returned %d after %.0f ms, fault flags %d\n", rc, now_ms() - t0, last_fault_flags);
  if (write(1, line, (size_t)n) != n) return 12;
  _exit(0); /* no exit handlers: libc may be wedged */
}

static void test_lock_fault(void) {
  int pfd[2];
  if (pipe(pfd) != 0) return;
  pid_t child = fork();
  if (child == 0) {
    dup2(pfd[1], 1);
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    execl(self, self, dir, "--lockfault", (char*)NULL);
    _exit(127);
  }
  close(pfd[1]);
  char line[200] = "";
  struct pollfd p = {pfd[0], POLLIN, 0};
  ssize_t n = 0;
  if (poll(&p, 1, 5000) == 1) n = read(pfd[0], line, sizeof line - 1);
  line[n > 0 ? n : 0] = '\0';
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  close(pfd[0]);
  int rc = 1;
  double ms = 1e9;
  sscanf(line, "returned %d after %lf ms", &rc, &ms);
  CHECK(rc == -1 && ms < 2000, "a thread-isolated callee faulting inside malloc_stats (arena lock held): the call fails at once, no join on a stuck thread (%s)",
        line[0] ? line : "no answer in 5 s");
}

/* ------------------------------------- item 10: a pinned slot generation */

static sem_t paused, go;
static volatile int pause_armed;
__attribute__((visibility("default"))) void nightfuse_merge_test_pause(int where) {
  if (where != 1 || !pause_armed) return;
  pause_armed = 0;
  sem_post(&paused);
  sem_wait(&go);
}

typedef struct {
  atomic_int stop;
  int wrong, calls;
} race_state;

/* Calls B until told to stop: B's answer or IPC's, never another callee's. */
static void* racer(void* p) {
  race_state* a = p;
  while (!atomic_load(&a->stop)) {
    const char* out;
    size_t ol;
    int rc = host_invoke("B", "y", 1, &out, &ol);
    if (rc == 0 && !(ol == 9 && memcmp(out, "y, World\n", 9) == 0) && !(ol == 7 && memcmp(out, "ipc:B:y", 7) == 0)) a->wrong++;
    a->calls++;
    host_call_end();
  }
  return NULL;
}

static char raced_out[256];
static void* race_call(void* a) {
  (void)a;
  const char* out;
  size_t ol;
  int rc = host_invoke("B", "x", 1, &out, &ol);
  snprintf(raced_out, sizeof raced_out, "%d:%.*s", rc, rc == 0 ? (int)ol : 0, rc == 0 ? out : "");
  host_call_end();
  return NULL;
}

static void test_slot_reuse(void) {
  char msg[512];
  sem_init(&paused, 0, 0);
  sem_init(&go, 0, 0);
  CHECK(load("B", "examples/libbar.so", 0, 1, msg) == 0 && route("B", 1) == 0 && call_is("B", "x", "x, World\n"), "LOAD+ROUTE B (libbar)");
  pause_armed = 1;
  pthread_t t;
  pthread_create(&t, NULL, race_call, NULL);
  sem_wait(&paused); /* the call has found B's slot and not pinned it yet */
  int swapped = unload("B", msg) == 0 && load("C", "libs/libcallees.so", 0, 1, msg) == 0 && route("C", 1) == 0;
  sem_post(&go);
  pthread_join(t, NULL);
  CHECK(swapped, "meanwhile: UNLOAD B, LOAD C into the freed slot, ROUTE C");
  CHECK(strcmp(raced_out, "0:ipc:B:x") == 0, "the call meant for B never runs C: it goes to B over IPC (got \"%s\")", raced_out);
  unload("C", msg);

  /* The same without pauses, racing for real (ThreadSanitizer checks the protocol). */
  race_state rs = {0, 0, 0};
  pthread_t r;
  pthread_create(&r, NULL, racer, &rs);
  int cycles_ok = 1;
  for (int i = 0; i < 100 && cycles_ok; i++) {
    cycles_ok = load("B", "examples/libbar.so", i % 3, 1, msg) == 0 && route("B", 1) == 0 && unload("B", msg) == 0 &&
                load("C", "libs/libcallees.so", i % 3, 1, msg) == 0 && route("C", 1) == 0 && unload("C", msg) == 0;
  }
  atomic_store(&rs.stop, 1);
  pthread_join(r, NULL);
  CHECK(cycles_ok && rs.wrong == 0, "100 B/C slot swaps under %d concurrent calls to B: %d answered by the wrong callee", rs.calls, rs.wrong);
}

/* --------------------------------------- item 11: hand-offs under load */

typedef struct {
  int n, bad;
} handoff_args;

static void* handoff_caller(void* p) {
  handoff_args* a = p;
  for (int i = 0; i < a->n; i++) {
    const char* in = i % 50 == 0 ? "sleep:1" : "h";
    const char* out;
    size_t ol;
    int rc = host_invoke("T", in, strlen(in), &out, &ol);
    if (rc != 0 || ol != strlen(in) || memcmp(out, in, ol) != 0) a->bad++;
    host_call_end();
  }
  return NULL;
}

static void test_handoffs(void) {
  char msg[512];
  CHECK(load("T", "libs/libcallees.so", NF_ISO_THREAD, 2, msg) == 0 && route("T", 1) == 0, "LOAD+ROUTE T (thread, 2 instances)");
  handoff_args a = {3000, 0}, b = {3000, 0};
  pthread_t t1, t2;
  pthread_create(&t1, NULL, handoff_caller, &a);
  pthread_create(&t2, NULL, handoff_caller, &b);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  CHECK(a.bad == 0 && b.bad == 0, "6000 thread hand-offs from two callers (parking on every 50th): %d wrong", a.bad + b.bad);
  unload("T", msg);
}

/* -------------------------------------------- item 8: 1,000 cycles */

typedef struct {
  int threads, fds, maps;
  long vm_kib;
} usage;

static usage measure_usage(void) {
  usage u = {count_entries("/proc/self/task"), count_entries("/proc/self/fd"), 0, 0};
  FILE* f = fopen("/proc/self/maps", "r");
  char line[4096];
  while (f && fgets(line, sizeof line, f)) u.maps++;
  if (f) fclose(f);
  char v[64];
  if (status_field(getpid(), getpid(), "VmSize", v, sizeof v) == 0) u.vm_kib = atol(v);
  return u;
}

static int one_cycle(int i, char* msg) {
  const char* kinds[] = {"segv", "bus", "fpe", "ill", "overflow"};
  int iso = i % 3;
  const char* kind = kinds[(i / 3) % 5];
  return load("Cyc", "libs/libcallees.so", iso, 1, msg) == 0 && route("Cyc", 1) == 0 && call_is("Cyc", "c", "c") &&
         call_fails("Cyc", kind) && unload("Cyc", msg) == 0;
}

static void test_cycles(int n) {
  char msg[512] = "";
  int ok = 1;
  for (int i = 0; i < 30 && ok; i++) /* warm-up: arenas, stack caches */
    if (!(ok = one_cycle(i, msg))) printf("# warm-up cycle %d: %s\n", i, msg);
  usage before = measure_usage();
  double t0 = now_ms();
  for (int i = 0; i < n && ok; i++)
    if (!(ok = one_cycle(i, msg))) printf("# cycle %d: %s\n", i, msg);
  double took = now_ms() - t0;
  usage after = measure_usage();
  CHECK(ok, "%d LOAD/ROUTE/call/fault/UNLOAD cycles over every isolation level and fault (%.0f ms)", n, took);
  CHECK(after.threads == before.threads, "threads %d -> %d", before.threads, after.threads);
  CHECK(after.fds == before.fds, "fds %d -> %d", before.fds, after.fds);
#ifdef __SANITIZE_THREAD__
  /* ThreadSanitizer maps shadow for every thread stack and never unmaps it: counted only without it. */
  printf("# under ThreadSanitizer: mappings %d -> %d, address space %ld -> %ld KiB (its own shadow)\n", before.maps, after.maps,
         before.vm_kib, after.vm_kib);
#else
  CHECK(after.maps <= before.maps + 8, "mappings %d -> %d (the allocator may add a few)", before.maps, after.maps);
  CHECK(after.vm_kib <= before.vm_kib + 4096, "address space %ld -> %ld KiB (a 64 KiB altstack or stack per cycle would add %d MiB)", before.vm_kib,
        after.vm_kib, n * 64 / 1024);
#endif
}

int main(int argc, char** argv) {
  find_build_dir(argc, argv);
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--lockfault") == 0) return lockfault_child();
  const char* only = argc > 2 ? argv[2] : NULL;
  signal(SIGPIPE, SIG_IGN);
  snprintf(root, sizeof root, "/tmp/nf-merge-root-%d", (int)getpid());
  mkdir(root, 0700);
  setenv("FAAS_ROOT_PATH_FOR_IPC", root, 1);
  if (listen_control_at(root) != 0) return 2;
  if (getenv("NF_START_BY_ENTRY")) { /* ThreadSanitizer: it cannot follow a thread started in a signal handler */
    CHECK(start_runtime(&rt, &start_fn) == 0 && start_fn(sock_path) == 0 && accept_runtime(3000) == getpid(), "runtime started through its entry");
  } else {
    test_start_signal();
  }
  if (conn < 0) return finish();
#define RUN(name, call) if (!only || strstr(only, name)) call /* only: a comma-separated list */
  RUN("long", test_long_strings());
  RUN("bigout", test_bigout());
  RUN("faults", test_fault_matrix());
  RUN("hostfault", test_host_fault());
  RUN("lockfault", test_lock_fault());
  RUN("slots", test_slot_reuse());
  RUN("handoffs", test_handoffs());
  RUN("cycles", test_cycles(getenv("NF_CYCLES") ? atoi(getenv("NF_CYCLES")) : 1000));
  drop_runtime();
  close(listen_fd);
  unlink(sock_path);
  rmdir(root);
  return finish();
}
