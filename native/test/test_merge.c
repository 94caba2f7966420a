/*
 * Native tests of the merge runtime: LOAD / ROUTE / UNLOAD / STATS, calls at
 * every isolation level, chains, faults, cycles, reconnects (merge_host.h
 * plays host and launcher). Usage: test_merge [build dir] [--bench]
 */
#include "merge_host.h"

/* Mappings in total, and those of a library whose path contains `lib`. */
static int count_maps(const char* lib, int* of_lib) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[4096];
  int n = 0;
  *of_lib = 0;
  while (f && fgets(line, sizeof line, f)) {
    n++;
    if (lib && strstr(line, lib)) (*of_lib)++;
  }
  if (f) fclose(f);
  return n;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Median and p99 of per-call ns over `rounds` batches of `batch` calls. */
static void measure(const char* name, int rounds, int batch, double* p50, double* p99) {
  double* v = malloc(sizeof(double) * (size_t)rounds);
  for (int r = 0; r < rounds; r++) {
    double t0 = now_ns();
    for (int i = 0; i < batch; i++) {
      const char* out;
      size_t ol;
      host_invoke(name, "x", 1, &out, &ol);
      host_call_end();
    }
    v[r] = (now_ns() - t0) / batch;
  }
  qsort(v, (size_t)rounds, sizeof *v, cmp_double);
  *p50 = v[rounds / 2];
  *p99 = v[(int)(rounds * 0.99)];
  free(v);
}

int main(int argc, char** argv) {
  int bench = 0;
  for (int i = 1; i < argc; i++) bench |= strcmp(argv[i], "--bench") == 0;
  find_build_dir(argc, argv);
  if (listen_control() != 0) return 2;
  void* rt;
  int (*start)(const char*);
  CHECK(start_runtime(&rt, &start) == 0, "load the merge runtime");
  if (!start) return 1;
  CHECK(start(sock_path) == 0, "nightfuse_merge_start connects");
  CHECK(accept_runtime(5000) == getpid(), "HELLO carries the pid");
  CHECK(start(sock_path) == 0, "a second start while running is a no-op");

  char msg[512];
  const char* iso_names[] = {"inline", "stack", "thread"};
  const char* bar_names[] = {"Bar", "BarS", "BarT"};
  for (int iso = 0; iso < 3; iso++) {
    CHECK(load(bar_names[iso], "examples/libbar.so", iso, 2, msg) == 0, "LOAD %s (%s): %s", bar_names[iso], iso_names[iso], msg);
  }
  CHECK(call_is("Bar", "Hi", "ipc:Bar:Hi"), "loaded but not routed: the call goes over IPC");
  for (int iso = 0; iso < 3; iso++) CHECK(route(bar_names[iso], 1) == 0, "ROUTE %s on", bar_names[iso]);
  for (int iso = 0; iso < 3; iso++) {
    int before = ipc_calls;
    CHECK(call_is(bar_names[iso], "Hi", "Hi, World\n") && ipc_calls == before, "%s call runs in process, same bytes as IPC", iso_names[iso]);
    CHECK(call_is(bar_names[iso], "", ", World\n"), "%s: empty input", iso_names[iso]);
  }
  char big[5000];
  memset(big, 'z', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  char want[5100];
  snprintf(want, sizeof want, "%s, World\n", big);
  CHECK(call_is("BarT", big, want), "large input/output through a thread hand-off");
  CHECK(call_is("Other", "x", "ipc:Other:x"), "unmerged callee still goes over IPC");

  /* Chains: merged Foo calls Bar locally (merged) or over IPC. */
  CHECK(load("Foo", "examples/libfoo.so", 0, 1, msg) == 0 && route("Foo", 1) == 0, "LOAD+ROUTE Foo");
  CHECK(call_is("Foo", "x", "From function Bar: x, World\n"), "merged Foo -> merged Bar, both local");
  route("Bar", 0);
  CHECK(call_is("Foo", "x", "From function Bar: ipc:Bar:x"), "merged Foo -> Bar over IPC after Bar's route went off");
  route("Bar", 1);

  /* Faults: each isolation level contains them. */
  const char* crash_names[] = {"Crashy", "CrashyS", "CrashyT"};
  const char* crash_inputs[] = {"crash", "recurse", "crash"};
  for (int iso = 0; iso < 3; iso++) {
    CHECK(load(crash_names[iso], "fixtures/libfaulty.so", iso, 1, msg) == 0 && route(crash_names[iso], 1) == 0, "LOAD+ROUTE %s", crash_names[iso]);
    CHECK(call_is(crash_names[iso], "ok", "ok"), "%s serves", crash_names[iso]);
    const char* out;
    size_t ol;
    int rc = host_invoke(crash_names[iso], crash_inputs[iso], strlen(crash_inputs[iso]), &out, &ol);
    host_call_end();
    CHECK(rc == -1, "%s: a %s in the callee (%s) fails only that call", crash_names[iso], crash_inputs[iso], iso_names[iso]);
    uint64_t c, f, fl;
    int routed = 1;
    stats(crash_names[iso], &c, &f, &fl, &routed);
    CHECK(fl == 1 && routed == 0, "%s: fault counted, route turned off", crash_names[iso]);
    char expect[64];
    snprintf(expect, sizeof expect, "ipc:%s:ok", crash_names[iso]);
    CHECK(call_is(crash_names[iso], "ok", expect), "%s: next call goes over IPC", crash_names[iso]);
    CHECK(route(crash_names[iso], 1) != 0, "%s: a faulted callee cannot be routed again before UNLOAD", crash_names[iso]);
    CHECK(unload(crash_names[iso], msg) == 0, "UNLOAD %s after its fault: %s", crash_names[iso], msg);
  }
  {
    CHECK(load("Fpe", "fixtures/libfaulty.so", 0, 1, msg) == 0 && route("Fpe", 1) == 0, "LOAD+ROUTE Fpe");
    const char* out;
    size_t ol;
    CHECK(host_invoke("Fpe", "fpe", 3, &out, &ol) == -1, "SIGFPE contained");
    host_call_end();
    unload("Fpe", msg);
  }
  uint64_t c, f, fl;
  int routed;
  stats("Bar", &c, &f, &fl, &routed);
  (void)routed;
  CHECK(atomic_load(&faults_seen) >= 3, "FAULT events reported to the launcher (%d, last %s)", atomic_load(&faults_seen), last_fault);
  CHECK(c >= 3 && f == 0, "STATS: Bar calls %llu, failures %llu", (unsigned long long)c, (unsigned long long)f);

  if (bench) {
    /* Per-call cost of each isolation level, the same host path as nightfuse-worker. */
    double p50, p99;
    printf("{\"bench\":\"merge\"");
    for (int iso = 0; iso < 3; iso++) {
      measure(bar_names[iso], 200, 2000, &p50, &p99);
      printf(",\"%s_ns\":[%.1f,%.1f]", iso_names[iso], p50, p99);
    }
    printf("}\n");
  }

  for (int iso = 0; iso < 3; iso++) unload(bar_names[iso], msg);
  unload("Foo", msg);

  /* LOAD -> ROUTE -> calls -> UNLOAD, 100 times per isolation level: no leaked threads or mappings. */
  int bar0, bar1;
  int threads0 = count_entries("/proc/self/task"), maps0 = count_maps("libbar.so", &bar0);
  int cycles_ok = 1;
  for (int i = 0; i < 100 && cycles_ok; i++) {
    for (int iso = 0; iso < 3; iso++) {
      if (load("Cycle", "examples/libbar.so", iso, 2, msg) != 0 || route("Cycle", 1) != 0 ||
          !call_is("Cycle", "c", "c, World\n") || unload("Cycle", msg) != 0) {
        cycles_ok = 0;
        printf("# cycle %d iso %d: %s\n", i, iso, msg);
        break;
      }
    }
  }
  CHECK(cycles_ok, "300 LOAD/ROUTE/call/UNLOAD cycles");
  int threads1 = count_entries("/proc/self/task"), maps1 = count_maps("libbar.so", &bar1);
  CHECK(threads1 == threads0, "no leaked threads (%d -> %d)", threads0, threads1);
  CHECK(bar0 == 0 && bar1 == 0, "the callee library is unmapped after each UNLOAD");
  /* 300 cycles each mapped stacks, threads and a library: a leak would show as hundreds. */
#ifdef __SANITIZE_THREAD__
  printf("# under ThreadSanitizer: mappings %d -> %d (its shadow for every thread stack stays)\n", maps0, maps1);
#else
  CHECK(maps1 <= maps0 + 8, "no leaked mappings (%d -> %d; allocator arenas may add a few)", maps0, maps1);
#endif
  CHECK(atomic_load(&nightfuse_route_hook) == NULL, "hook cleared when nothing is routed");

  /* Launcher gone: routes go off, the runtime stops, a new start reconnects. */
  CHECK(load("Bar", "examples/libbar.so", 0, 1, msg) == 0 && route("Bar", 1) == 0, "route before disconnect");
  drop_runtime();
  for (int i = 0; i < 200 && atomic_load(&nightfuse_route_hook) != NULL; i++) usleep(5000);
  CHECK(atomic_load(&nightfuse_route_hook) == NULL, "disconnect turns every route off");
  usleep(20000);
  CHECK(start(sock_path) == 0, "restart after the launcher went away");
  CHECK(accept_runtime(5000) == getpid(), "new HELLO");
  CHECK(route("Bar", 1) == 0 && call_is("Bar", "again", "again, World\n"), "loaded callees survive a reconnect");
  drop_runtime();
  close(listen_fd);
  unlink(sock_path);
  return finish();
}
