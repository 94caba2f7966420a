/*
 * The control thread: serves LOAD / ROUTE / UNLOAD / STATS from the launcher
 * (include/nightfuse/merge_proto.h), reports FAULTs and takes their
 * acknowledgements. It is the only writer of callee slots and of the socket.
 */
#include "runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <linux/futex.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

#define ENAMETOOLONG_ 36
#define FAULTED_JOIN_MS 1000

int g_sock = -1;
static pthread_mutex_t g_ctl_mu = PTHREAD_MUTEX_INITIALIZER; /* serializes commands and the routes-off on exit */
static uint64_t g_tsc_hz;
static nf_mp_writer g_w;

static callee* find_loaded(const char* name) {
  for (int i = 0; i < MAX_CALLEES; i++)
    if (atomic_load(&g_callees[i].loaded) && strcmp(g_callees[i].name_plain, name) == 0) return &g_callees[i];
  return NULL;
}

/* Destroys an instance with a fault frame armed: a faulted instance's state
 * is unknown, and its destroy may fault too; that must not take the process down. */
__attribute__((noinline)) static void guarded_destroy(callee* c, instance* in) {
  fault_frame f;
  nf_ensure_altstack();
  if (sigsetjmp(f.env, 0) != 0) {
    nf_after_fault_jump();
    return;
  }
  tls_frame = &f;
  c->destroy(in->handle);
  tls_frame = NULL;
}

/* Frees everything the instances hold; 0, or -1 if a faulted callee thread
 * would not exit (it may hold a libc lock: it is left behind, and said so). */
static int free_instances(callee* c) {
  int rc = 0;
  for (int i = 0; i < c->n_instances; i++) {
    instance* in = &c->inst[i];
    if (in->has_thread) {
      if (!in->thread_faulted) {
        atomic_store(&in->state, 3);
        nf_futex(&in->state, FUTEX_WAKE, 1, NULL);
        pthread_join(in->thread, NULL);
      } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += FAULTED_JOIN_MS / 1000;
        if (pthread_timedjoin_np(in->thread, NULL, &ts) != 0) rc = -1;
      }
      in->has_thread = false;
    }
    if (in->handle && c->destroy) guarded_destroy(c, in);
    if (in->stack_base) {
#ifdef __SANITIZE_ADDRESS__
      ASAN_UNPOISON_MEMORY_REGION(in->stack_base, in->stack_size); /* a faulted callee's frames stay poisoned */
#endif
      munmap((char*)in->stack_base - 4096, in->stack_size + 4096);
    }
    nf_release_deferred(in);
    free(in->defer);
    free(in->out);
    memset(in, 0, sizeof *in);
  }
  c->n_instances = 0;
  return rc;
}

/* The executable range of the library `lib` was loaded as (to tell faults in its own code). */
typedef struct {
  uintptr_t base;
  const char* name;
  uintptr_t lo, hi;
} text_query;

static int find_text(struct dl_phdr_info* info, size_t size, void* p) {
  (void)size;
  text_query* q = p;
  if (info->dlpi_addr != q->base || !info->dlpi_name || strcmp(info->dlpi_name, q->name) != 0) return 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)* ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
    if (!q->lo || lo < q->lo) q->lo = lo;
    if (hi > q->hi) q->hi = hi;
  }
  return 1;
}

static void set_name(callee* c, const char* name) {
  size_t n = strlen(name);
  for (size_t k = 0; k <= n; k++) atomic_store_explicit(&c->name[k], (unsigned char)name[k], memory_order_relaxed);
  memcpy(c->name_plain, name, n + 1);
}

static int start_instances(callee* c, create_fn create, int n, int stack_kib, char* msg, size_t msglen) {
  for (int i = 0; i < n; i++) {
    instance* in = &c->inst[i];
    in->owner = c;
    c->n_instances = i + 1;
    if (create(in, nf_merge_invoke, nf_merge_append, &in->handle) != 0)
      return snprintf(msg, msglen, "faas_create_func_worker failed for instance %d", i), -5;
    if (c->isolation == NF_ISO_STACK) {
      in->stack_size = (size_t)stack_kib * 1024;
      char* p = mmap(NULL, in->stack_size + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (p == MAP_FAILED) return snprintf(msg, msglen, "cannot map a callee stack: %s", strerror(errno)), -12;
      mprotect(p, 4096, PROT_NONE); /* guard page */
      in->stack_base = p + 4096;
    } else if (c->isolation == NF_ISO_THREAD) {
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstacksize(&attr, (size_t)stack_kib * 1024);
      pthread_attr_setguardsize(&attr, 4096);
      int e = pthread_create(&in->thread, &attr, nf_callee_thread, in);
      pthread_attr_destroy(&attr);
      if (e) return snprintf(msg, msglen, "cannot start a callee thread: %s", strerror(e)), -e;
      in->has_thread = true;
    }
  }
  return 0;
}

static int do_load(const char* name, const char* library, int isolation, int n, int stack_kib, char* msg, size_t msglen) {
  if (!*name) return snprintf(msg, msglen, "empty callee name"), -22;
  if (find_loaded(name)) return snprintf(msg, msglen, "%s is already loaded", name), -17;
  if (isolation < NF_ISO_INLINE || isolation > NF_ISO_THREAD) return snprintf(msg, msglen, "unknown isolation %d", isolation), -22;
  if (n < 1) n = 1;
  if (n > MAX_INSTANCES) return snprintf(msg, msglen, "at most %d instances", MAX_INSTANCES), -22;
  if (stack_kib < 64) stack_kib = 256;
  callee* c = NULL;
  for (int i = 0; i < MAX_CALLEES && !c; i++)
    if (!atomic_load(&g_callees[i].loaded) && !atomic_load(&g_callees[i].inflight)) c = &g_callees[i];
  if (!c) return snprintf(msg, msglen, "no free callee slot (%d loaded)", MAX_CALLEES), -28;
  /* Odd generation while the slot is rebuilt: no lookup matches it. */
  uint32_t g = atomic_load(&c->gen);
  if (!(g & 1)) atomic_store(&c->gen, g + 1);
  set_name(c, name);
  snprintf(c->library, sizeof c->library, "%s", library);
  c->isolation = isolation;
  c->n_instances = 0;
  c->text_lo = c->text_hi = 0;
  atomic_store(&c->faulted, 0);
  atomic_store(&c->calls, 0);
  atomic_store(&c->failures, 0);
  atomic_store(&c->faults, 0);
  atomic_store(&c->total_cycles, 0);
  atomic_store(&c->max_cycles, 0);
  for (int b = 0; b < NF_MP_HIST; b++) atomic_store(&c->hist[b], 0);
  /* RTLD_LOCAL: caller and callee both export faas_func_call. */
  c->lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!c->lib) return snprintf(msg, msglen, "dlopen: %s", dlerror()), -2;
  struct link_map* lm = NULL;
  if (dlinfo(c->lib, RTLD_DI_LINKMAP, &lm) == 0 && lm) {
    text_query q = {lm->l_addr, lm->l_name, 0, 0};
    dl_iterate_phdr(find_text, &q);
    c->text_lo = q.lo;
    c->text_hi = q.hi;
  }
  init_fn init = (init_fn)dlsym(c->lib, "faas_init");
  create_fn create = (create_fn)dlsym(c->lib, "faas_create_func_worker");
  c->call = (call_fn)dlsym(c->lib, "faas_func_call");
  c->destroy = (destroy_fn)dlsym(c->lib, "faas_destroy_func_worker");
  c->call_grpc = (grpc_call_fn)dlsym(c->lib, "faas_func_call_grpc");
  int rc = 0;
  if (!init || !create || !c->call || !c->destroy) rc = (snprintf(msg, msglen, "%s does not export the worker_v1 interface", library), -22);
  else if (init() != 0) rc = (snprintf(msg, msglen, "faas_init of %s failed", library), -5);
  else rc = start_instances(c, create, n, stack_kib, msg, msglen);
  if (rc != 0) {
    free_instances(c);
    dlclose(c->lib);
    c->lib = NULL;
    return rc;
  }
  atomic_fetch_add(&c->gen, 1); /* even: published */
  atomic_store(&c->loaded, 1);
  snprintf(msg, msglen, "loaded %s (%d instance%s)", name, n, n == 1 ? "" : "s");
  return 0;
}

static int do_route(const char* name, int on, char* msg, size_t msglen) {
  callee* c = find_loaded(name);
  if (!c) return snprintf(msg, msglen, "%s is not loaded", name), -2;
  if (on && atomic_load(&c->faulted)) return snprintf(msg, msglen, "%s faulted; unload it first (the worker should be replaced)", name), -5;
  atomic_store(&c->routed, on ? 1 : 0);
  nf_update_hook();
  snprintf(msg, msglen, "route %s %s", name, on ? "on" : "off");
  return 0;
}

static int do_unload(const char* name, int timeout_ms, char* msg, size_t msglen) {
  callee* c = find_loaded(name);
  if (!c) return snprintf(msg, msglen, "%s is not loaded", name), -2;
  atomic_store(&c->routed, 0);
  nf_update_hook();
  if (timeout_ms <= 0) timeout_ms = 5000;
  for (int waited = 0; atomic_load(&c->inflight) > 0; waited++) {
    if (waited >= timeout_ms * 10)
      return snprintf(msg, msglen, "%s still has %d call(s) in flight after %d ms; route is off, still loaded", name,
                      atomic_load(&c->inflight), timeout_ms), -16;
    usleep(100);
  }
  atomic_fetch_add(&c->gen, 1); /* odd: torn down; a call pinned to the old generation backs off */
  int stuck = free_instances(c);
  dlclose(c->lib);
  c->lib = NULL;
  atomic_store(&c->loaded, 0);
  if (stuck) return snprintf(msg, msglen, "unloaded %s, but a faulted callee thread did not exit (it may hold a libc lock): replace this worker", name), -16;
  snprintf(msg, msglen, "unloaded %s", name);
  return 0;
}

void nf_routes_off(void) {
  pthread_mutex_lock(&g_ctl_mu);
  for (int i = 0; i < MAX_CALLEES; i++) atomic_store(&g_callees[i].routed, 0);
  nf_update_hook();
  pthread_mutex_unlock(&g_ctl_mu);
}

static void calibrate_tsc(void) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  uint64_t t0 = __rdtsc();
  struct timespec d = {0, 5 * 1000 * 1000};
  nanosleep(&d, NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  uint64_t t1 = __rdtsc();
  double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
  g_tsc_hz = ns > 0 ? (uint64_t)((t1 - t0) * 1e9 / ns) : 0;
}

static int send_frame(nf_mp_writer* w) {
  nf_mp_end(w);
  if (w->overflow) return -1;
  size_t off = 0;
  while (off < w->len) {
    ssize_t n = send(g_sock, w->buf + off, w->len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    off += (size_t)n;
  }
  return 0;
}

static void send_faults(void) {
  for (int i = 0; i < MAX_CALLEES; i++) {
    callee* c = &g_callees[i];
    int one = 1;
    if (!atomic_compare_exchange_strong(&c->faulted, &one, 2)) continue; /* 2: reported */
    nf_mp_begin(&g_w, NF_MP_FAULT, c->fault_id, 0);
    nf_mp_str(&g_w, c->name_plain);
    nf_mp_u32(&g_w, (uint32_t)c->fault_signo);
    nf_mp_u64(&g_w, (uint64_t)c->fault_addr);
    nf_mp_u64(&g_w, atomic_load(&c->calls));
    nf_mp_u8(&g_w, c->fault_in_callee ? NF_MP_FAULT_IN_CALLEE : 0);
    send_frame(&g_w);
  }
}

static void put_stats(nf_mp_writer* w) {
  nf_mp_u64(w, g_tsc_hz);
  uint16_t n = 0;
  for (int i = 0; i < MAX_CALLEES; i++) n += atomic_load(&g_callees[i].loaded) != 0;
  nf_mp_u16(w, n);
  for (int i = 0; i < MAX_CALLEES; i++) {
    callee* c = &g_callees[i];
    if (!atomic_load(&c->loaded)) continue;
    nf_mp_str(w, c->name_plain);
    nf_mp_u8(w, (uint8_t)c->isolation);
    nf_mp_u8(w, (uint8_t)atomic_load(&c->routed));
    nf_mp_u8(w, (uint8_t)(atomic_load(&c->faulted) != 0));
    nf_mp_u8(w, 0);
    nf_mp_u64(w, atomic_load(&c->calls));
    nf_mp_u64(w, atomic_load(&c->failures));
    nf_mp_u64(w, atomic_load(&c->faults));
    nf_mp_u64(w, atomic_load(&c->total_cycles));
    nf_mp_u64(w, atomic_load(&c->max_cycles));
    nf_mp_u32(w, (uint32_t)atomic_load(&c->inflight));
    nf_mp_u32(w, (uint32_t)c->n_instances);
    for (int b = 0; b < NF_MP_HIST; b++) nf_mp_u32(w, atomic_load(&c->hist[b]));
  }
}

/* A malformed or over-long request: the message names what was wrong. */
static int refused(const nf_mp_reader* r, const char* what, char* msg, size_t msglen) {
  if (r->too_long)
    return snprintf(msg, msglen, "%s: a string of %u bytes is too long (callee names at most %d bytes, library paths %d); refused, not truncated",
                    what, r->too_long_len, NF_MP_MAX_NAME, NF_MP_MAX_PATH), -ENAMETOOLONG_;
  return snprintf(msg, msglen, "malformed %s", what), -22;
}

static void handle(const uint8_t* frame, uint32_t len) {
  nf_mp_reader r = {frame, len, 0, 0, 0, 0};
  nf_mp_get_u32(&r);
  uint16_t type = nf_mp_get_u16(&r);
  nf_mp_get_u16(&r);
  uint32_t id = nf_mp_get_u32(&r);
  nf_mp_get_u32(&r);
  if (type == (NF_MP_FAULT | NF_MP_REPLY)) { /* the launcher has the worker out of dispatch */
    nf_fault_acked(id);
    return;
  }
  char msg[600] = "";
  static char name[NF_MP_MAX_NAME + 1], lib[NF_MP_MAX_PATH + 1];
  int rc;
  pthread_mutex_lock(&g_ctl_mu);
  switch (type) {
    case NF_MP_LOAD: {
      nf_mp_get_str(&r, name, sizeof name);
      nf_mp_get_str(&r, lib, sizeof lib);
      int iso = nf_mp_get_u8(&r);
      nf_mp_get_u8(&r);
      int n = nf_mp_get_u16(&r);
      int kib = (int)nf_mp_get_u32(&r);
      rc = r.bad || r.too_long ? refused(&r, "LOAD", msg, sizeof msg) : do_load(name, lib, iso, n, kib, msg, sizeof msg);
      break;
    }
    case NF_MP_ROUTE: {
      nf_mp_get_str(&r, name, sizeof name);
      int on = nf_mp_get_u8(&r);
      rc = r.bad || r.too_long ? refused(&r, "ROUTE", msg, sizeof msg) : do_route(name, on, msg, sizeof msg);
      break;
    }
    case NF_MP_UNLOAD: {
      nf_mp_get_str(&r, name, sizeof name);
      int timeout = (int)nf_mp_get_u32(&r);
      rc = r.bad || r.too_long ? refused(&r, "UNLOAD", msg, sizeof msg) : do_unload(name, timeout, msg, sizeof msg);
      break;
    }
    case NF_MP_STATS:
      rc = 0;
      break;
    default:
      rc = -95;
      snprintf(msg, sizeof msg, "unknown request type %u", type);
  }
  nf_mp_begin(&g_w, (uint16_t)(type | NF_MP_REPLY), id, rc);
  nf_mp_str(&g_w, msg);
  if (type == NF_MP_STATS) put_stats(&g_w);
  pthread_mutex_unlock(&g_ctl_mu);
  send_frame(&g_w);
}

void* nf_control_thread(void* arg) {
  (void)arg;
  calibrate_tsc();
  static uint8_t buf[NF_MP_MAX_FRAME * 2];
  uint32_t have = 0;
  struct pollfd pfd[2] = {{g_sock, POLLIN, 0}, {g_event_fd, POLLIN, 0}};
  for (;;) {
    if (poll(pfd, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfd[1].revents & POLLIN) {
      uint64_t v;
      if (read(g_event_fd, &v, 8) < 0) { /* nothing pending */ }
      send_faults();
    }
    if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    ssize_t n = recv(g_sock, buf + have, sizeof buf - have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += (uint32_t)n;
    while (have >= 4) {
      uint32_t len;
      memcpy(&len, buf, 4);
      if (len < NF_MP_HEADER || len > NF_MP_MAX_FRAME) goto out; /* protocol error: drop the connection */
      if (have < len) break;
      handle(buf, len);
      memmove(buf, buf + len, have - len);
      have -= len;
    }
  }
out:
  /* Launcher gone: nothing may stay merged without it. */
  nf_routes_off();
  close(g_sock);
  g_sock = -1;
  atomic_store(&g_running, 0);
  nf_fault_acked(0); /* a faulting call waiting for an acknowledgement stops waiting */
  return NULL;
}
