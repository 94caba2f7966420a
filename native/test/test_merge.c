/*
 * Native tests of the merge runtime. This program plays the worker host (it
 * exports nightfuse_route_hook and nightfuse_host_invoke_ipc, like
 * nightfuse-worker) and the launcher (it serves the control socket), loads
 * libnightfuse_merge.so and drives LOAD / ROUTE / UNLOAD / STATS.
 * Usage: test_merge [build dir] [--bench]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "nightfuse/merge_proto.h"
#include "nightfuse/route_hook.h"

/* ---- the host side, as nightfuse-worker exports it ---- */
__attribute__((visibility("default"))) _Atomic(nightfuse_route_fn) nightfuse_route_hook = NULL;
static void* host_deferred[1024];
static int host_n_deferred;
static int ipc_calls;

__attribute__((visibility("default"))) int nightfuse_host_invoke_ipc(const char* name, const char* in, size_t len,
                                                                     const char** out, size_t* out_len) {
  ipc_calls++;
  size_t n = strlen(name);
  char* o = malloc(n + len + 6);
  memcpy(o, "ipc:", 4);
  memcpy(o + 4, name, n);
  o[4 + n] = ':';
  memcpy(o + 5 + n, in, len);
  host_deferred[host_n_deferred++] = o;
  *out = o;
  *out_len = n + len + 5;
  return 0;
}

/* What the host's invoke_func_fn does. */
static int host_invoke(const char* name, const char* in, size_t len, const char** out, size_t* out_len) {
  nightfuse_route_fn hook = atomic_load_explicit(&nightfuse_route_hook, memory_order_acquire);
  if (hook) {
    const char* o = NULL;
    size_t ol = 0;
    int r = hook(name, in, len, &o, &ol);
    if (r != NIGHTFUSE_ROUTE_PASS) {
      if (r != 0) return -1;
      if (o) host_deferred[host_n_deferred++] = (void*)o;
      *out = o;
      *out_len = ol;
      return 0;
    }
  }
  return nightfuse_host_invoke_ipc(name, in, len, out, out_len);
}

/* The end of the caller's faas_func_call: outputs are released. */
static void host_call_end(void) {
  for (int i = 0; i < host_n_deferred; i++) free(host_deferred[i]);
  host_n_deferred = 0;
}

/* ---- test plumbing ---- */
static int passes, failures;
#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (cond) { passes++; printf("ok - "); }              \
    else { failures++; printf("not ok - "); }             \
    printf(__VA_ARGS__);                                  \
    printf("\n");                                         \
    fflush(stdout);                                       \
  } while (0)

static int conn = -1;
static uint32_t next_id = 1;
static char dir[1024];
static uint8_t rbuf[NF_MP_MAX_FRAME];
static int faults_seen;
static char last_fault[256];

static int read_frame(uint8_t* buf) {
  uint32_t len, got = 0;
  if (recv(conn, &len, 4, MSG_WAITALL) != 4 || len < NF_MP_HEADER || len > NF_MP_MAX_FRAME) return -1;
  memcpy(buf, &len, 4);
  got = 4;
  while (got < len) {
    ssize_t n = recv(conn, buf + got, len - got, 0);
    if (n <= 0) return -1;
    got += (uint32_t)n;
  }
  return (int)len;
}

/* Sends a request and waits for its reply (FAULT events on the way are noted). */
static int request(nf_mp_writer* w, char* msg, size_t msglen, nf_mp_reader* body) {
  nf_mp_end(w);
  if (send(conn, w->buf, w->len, 0) != (ssize_t)w->len) return -999;
  uint32_t id;
  memcpy(&id, w->buf + 8, 4);
  for (;;) {
    int len = read_frame(rbuf);
    if (len < 0) return -998;
    nf_mp_reader r = {rbuf, (uint32_t)len, 0, 0};
    nf_mp_get_u32(&r);
    uint16_t type = nf_mp_get_u16(&r);
    nf_mp_get_u16(&r);
    uint32_t rid = nf_mp_get_u32(&r);
    int32_t status = (int32_t)nf_mp_get_u32(&r);
    if (type == NF_MP_FAULT) {
      faults_seen++;
      nf_mp_get_str(&r, last_fault, sizeof last_fault);
      continue;
    }
    if (rid != id) continue;
    nf_mp_get_str(&r, msg, (uint32_t)msglen);
    if (body) *body = r;
    return status;
  }
}

static nf_mp_writer w;
static int load(const char* name, const char* lib, int iso, int n, char* msg) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, lib);
  nf_mp_begin(&w, NF_MP_LOAD, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_str(&w, path);
  nf_mp_u8(&w, (uint8_t)iso);
  nf_mp_u8(&w, 0);
  nf_mp_u16(&w, (uint16_t)n);
  nf_mp_u32(&w, 0);
  return request(&w, msg, 512, NULL);
}
static int route(const char* name, int on) {
  char msg[512];
  nf_mp_begin(&w, NF_MP_ROUTE, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_u8(&w, (uint8_t)on);
  return request(&w, msg, sizeof msg, NULL);
}
static int unload(const char* name, char* msg) {
  nf_mp_begin(&w, NF_MP_UNLOAD, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_u32(&w, 2000);
  return request(&w, msg, 512, NULL);
}
/* STATS: returns calls/failures/faults of one callee, -1 if absent. */
static int stats(const char* name, uint64_t* calls, uint64_t* failures_, uint64_t* faults, int* routed) {
  char msg[512];
  nf_mp_reader r;
  nf_mp_begin(&w, NF_MP_STATS, next_id++, 0);
  if (request(&w, msg, sizeof msg, &r) != 0) return -1;
  nf_mp_get_u64(&r); /* tsc_hz */
  int n = nf_mp_get_u16(&r);
  for (int i = 0; i < n; i++) {
    char nm[256];
    nf_mp_get_str(&r, nm, sizeof nm);
    nf_mp_get_u8(&r);
    int rt = nf_mp_get_u8(&r);
    nf_mp_get_u8(&r);
    nf_mp_get_u8(&r);
    uint64_t c = nf_mp_get_u64(&r), f = nf_mp_get_u64(&r), fl = nf_mp_get_u64(&r);
    nf_mp_get_u64(&r);
    nf_mp_get_u64(&r);
    nf_mp_get_u32(&r);
    nf_mp_get_u32(&r);
    for (int b = 0; b < NF_MP_HIST; b++) nf_mp_get_u32(&r);
    if (strcmp(nm, name) == 0) {
      *calls = c;
      *failures_ = f;
      *faults = fl;
      *routed = rt;
      return 0;
    }
  }
  return -1;
}

static int call_is(const char* name, const char* in, const char* want) {
  const char* out;
  size_t ol;
  int rc = host_invoke(name, in, strlen(in), &out, &ol);
  int ok = rc == 0 && ol == strlen(want) && memcmp(out, want, ol) == 0;
  if (!ok) printf("# %s(%s) -> rc %d, %.*s\n", name, in, rc, rc == 0 ? (int)ol : 0, rc == 0 ? out : "");
  host_call_end();
  return ok;
}

static int count_dir(const char* path) {
  DIR* d = opendir(path);
  int n = 0;
  struct dirent* e;
  while (d && (e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}
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
  snprintf(dir, sizeof dir, "native/build");
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--bench") == 0) bench = 1;
    else if (!strstr(argv[i], "golden")) snprintf(dir, sizeof dir, "%s", argv[i]);
  }
  char self[1024];
  ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sn > 0) { /* <build>/test/test_merge -> <build> */
    self[sn] = '\0';
    *strrchr(self, '/') = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(dir, sizeof dir, "%s", self);
  }
  char sock_path[108];
  snprintf(sock_path, sizeof sock_path, "/tmp/nf-merge-test-%d.sock", (int)getpid());
  unlink(sock_path);
  int ls = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path);
  if (bind(ls, (struct sockaddr*)&addr, sizeof addr) || listen(ls, 1)) return 2;

  char rt_path[1200];
  snprintf(rt_path, sizeof rt_path, "%s/libnightfuse_merge.so", dir);
  void* rt = dlopen(rt_path, RTLD_NOW | RTLD_LOCAL);
  CHECK(rt != NULL, "load the merge runtime: %s", rt ? "" : dlerror());
  if (!rt) return 1;
  int (*start)(const char*) = (int (*)(const char*))dlsym(rt, "nightfuse_merge_start");
  CHECK(start && start(sock_path) == 0, "nightfuse_merge_start connects");
  conn = accept(ls, NULL, NULL);
  int len = read_frame(rbuf);
  nf_mp_reader hr = {rbuf, (uint32_t)len, NF_MP_HEADER, 0};
  uint16_t htype;
  memcpy(&htype, rbuf + 4, 2);
  CHECK(len > 0 && htype == NF_MP_HELLO && nf_mp_get_u32(&hr) == (uint32_t)getpid(), "HELLO carries the pid");
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
  CHECK(faults_seen >= 3, "FAULT events reported to the launcher (%d, last %s)", faults_seen, last_fault);
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
  int threads0 = count_dir("/proc/self/task"), maps0 = count_maps("libbar.so", &bar0);
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
  int threads1 = count_dir("/proc/self/task"), maps1 = count_maps("libbar.so", &bar1);
  CHECK(threads1 == threads0, "no leaked threads (%d -> %d)", threads0, threads1);
  CHECK(bar0 == 0 && bar1 == 0, "the callee library is unmapped after each UNLOAD");
  /* 300 cycles each mapped stacks, threads and a library: a leak would show as hundreds. */
  CHECK(maps1 <= maps0 + 8, "no leaked mappings (%d -> %d; allocator arenas may add a few)", maps0, maps1);
  CHECK(atomic_load(&nightfuse_route_hook) == NULL, "hook cleared when nothing is routed");

  /* Launcher gone: routes go off, the runtime stops, a new start reconnects. */
  CHECK(load("Bar", "examples/libbar.so", 0, 1, msg) == 0 && route("Bar", 1) == 0, "route before disconnect");
  close(conn);
  for (int i = 0; i < 200 && atomic_load(&nightfuse_route_hook) != NULL; i++) usleep(5000);
  CHECK(atomic_load(&nightfuse_route_hook) == NULL, "disconnect turns every route off");
  usleep(20000);
  CHECK(start(sock_path) == 0, "restart after the launcher went away");
  conn = accept(ls, NULL, NULL);
  CHECK(read_frame(rbuf) > 0, "new HELLO");
  CHECK(route("Bar", 1) == 0 && call_is("Bar", "again", "again, World\n"), "loaded callees survive a reconnect");
  close(conn);
  close(ls);
  unlink(sock_path);
  printf("%d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
