/*
 * For the merge runtime's native tests: this program plays the worker host
 * (it exports nightfuse_route_hook and nightfuse_host_invoke_ipc, like
 * nightfuse-worker) and the launcher (it serves the control socket on a
 * thread of its own, which acknowledges FAULT events at once, as the
 * launcher does; requests wait for their replies).
 */
#ifndef NIGHTFUSE_TEST_MERGE_HOST_H_
#define NIGHTFUSE_TEST_MERGE_HOST_H_
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "nightfuse/merge_proto.h"
#include "nightfuse/route_hook.h"

/* ---- the host side, as nightfuse-worker exports it ---- */
__attribute__((visibility("default"))) _Atomic(nightfuse_route_fn) nightfuse_route_hook = NULL;
/* Per calling thread, as each worker call has its own output lifetime. */
static __thread void* host_deferred[1024];
static __thread int host_n_deferred;
static atomic_int ipc_calls;
static __thread volatile int host_in_ipc; /* set while the host's own IPC code runs */

/* The IPC path: answers "ipc:<name>:<input>". A call to "HostCrash" faults
 * inside it (a bug in the host, not in a merged callee). */
__attribute__((visibility("default"), no_sanitize("undefined"))) int nightfuse_host_invoke_ipc(
    const char* name, const char* in, size_t len, const char** out, size_t* out_len) {
  host_in_ipc = 1;
  atomic_fetch_add(&ipc_calls, 1);
  if (strcmp(name, "HostCrash") == 0) {
    volatile int* p = NULL;
    *p = 1;
  }
  size_t n = strlen(name);
  char* o = malloc(n + len + 6);
  memcpy(o, "ipc:", 4);
  memcpy(o + 4, name, n);
  o[4 + n] = ':';
  memcpy(o + 5 + n, in, len);
  if (host_n_deferred < (int)(sizeof host_deferred / sizeof host_deferred[0])) host_deferred[host_n_deferred++] = o;
  *out = o;
  *out_len = n + len + 5;
  host_in_ipc = 0;
  return 0;
}

/* What the host's invoke_func_fn does. */
static __attribute__((unused)) int host_invoke(const char* name, const char* in, size_t len, const char** out, size_t* out_len) {
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
static __attribute__((unused)) void host_call_end(void) {
  for (int i = 0; i < host_n_deferred; i++) free(host_deferred[i]);
  host_n_deferred = 0;
}

static __attribute__((unused)) int call_is(const char* name, const char* in, const char* want) {
  const char* out;
  size_t ol;
  int rc = host_invoke(name, in, strlen(in), &out, &ol);
  int ok = rc == 0 && ol == strlen(want) && memcmp(out, want, ol) == 0;
  if (!ok) printf("# %s(%.40s) -> rc %d, %.*s\n", name, in, rc, rc == 0 ? (int)(ol > 200 ? 200 : ol) : 0, rc == 0 ? out : "");
  host_call_end();
  return ok;
}

/* A call that must fail (rc -1). */
static __attribute__((unused)) int call_fails(const char* name, const char* in) {
  const char* out;
  size_t ol;
  int rc = host_invoke(name, in, strlen(in), &out, &ol);
  host_call_end();
  return rc == -1;
}

/* ---- the launcher side ---- */
static int conn = -1, listen_fd = -1;
static char sock_path[108];
static pthread_t launcher;
static pthread_mutex_t lmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lcv = PTHREAD_COND_INITIALIZER;
static uint8_t reply_buf[NF_MP_MAX_FRAME], body_buf[NF_MP_MAX_FRAME];
static uint32_t reply_len, reply_id;
static int reply_ready, launcher_done;
static atomic_int faults_seen, fault_acks = 1;
static char last_fault[256];
static int last_fault_signal, last_fault_flags;
static uint32_t next_id = 1;

static int read_frame(int fd, uint8_t* buf) {
  uint32_t len, got = 4;
  if (recv(fd, &len, 4, MSG_WAITALL) != 4 || len < NF_MP_HEADER || len > NF_MP_MAX_FRAME) return -1;
  memcpy(buf, &len, 4);
  while (got < len) {
    ssize_t n = recv(fd, buf + got, len - got, 0);
    if (n <= 0) return -1;
    got += (uint32_t)n;
  }
  return (int)len;
}

static void* launcher_main(void* arg) {
  (void)arg;
  static uint8_t f[NF_MP_MAX_FRAME];
  for (;;) {
    int len = read_frame(conn, f);
    if (len < 0) break;
    nf_mp_reader r = {f, (uint32_t)len, 0, 0, 0, 0};
    nf_mp_get_u32(&r);
    uint16_t type = nf_mp_get_u16(&r);
    nf_mp_get_u16(&r);
    uint32_t id = nf_mp_get_u32(&r);
    nf_mp_get_u32(&r);
    if (type == NF_MP_FAULT) {
      pthread_mutex_lock(&lmu);
      nf_mp_get_str(&r, last_fault, sizeof last_fault);
      last_fault_signal = (int)nf_mp_get_u32(&r);
      nf_mp_get_u64(&r);
      nf_mp_get_u64(&r);
      last_fault_flags = nf_mp_get_u8(&r);
      atomic_fetch_add(&faults_seen, 1);
      pthread_mutex_unlock(&lmu);
      if (atomic_load(&fault_acks)) {
        nf_mp_writer ack;
        nf_mp_begin(&ack, NF_MP_FAULT | NF_MP_REPLY, id, 0);
        nf_mp_end(&ack);
        if (send(conn, ack.buf, ack.len, MSG_NOSIGNAL) != (ssize_t)ack.len) break;
      }
      continue;
    }
    pthread_mutex_lock(&lmu);
    memcpy(reply_buf, f, (size_t)len);
    reply_len = (uint32_t)len;
    reply_id = id;
    reply_ready = 1;
    pthread_cond_broadcast(&lcv);
    pthread_mutex_unlock(&lmu);
  }
  pthread_mutex_lock(&lmu);
  launcher_done = 1;
  pthread_cond_broadcast(&lcv);
  pthread_mutex_unlock(&lmu);
  return NULL;
}

static int listen_at(void) {
  unlink(sock_path);
  listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path);
  return bind(listen_fd, (struct sockaddr*)&addr, sizeof addr) || listen(listen_fd, 4) ? -1 : 0;
}

static __attribute__((unused)) int listen_control(void) {
  snprintf(sock_path, sizeof sock_path, "/tmp/nf-merge-test-%d.sock", (int)getpid());
  return listen_at();
}

/* Where a worker's runtime looks for it: <ipc root>/merge.sock. */
static __attribute__((unused)) int listen_control_at(const char* ipc_root) {
  if (snprintf(sock_path, sizeof sock_path, "%s/merge.sock", ipc_root) >= (int)sizeof sock_path) return -1;
  return listen_at();
}

/* Accepts the runtime's connection (within timeout_ms); returns the pid in its HELLO, or -1. */
static __attribute__((unused)) int accept_runtime(int timeout_ms) {
  struct pollfd p = {listen_fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return -1;
  conn = accept(listen_fd, NULL, NULL);
  uint8_t hello[512];
  int len = read_frame(conn, hello);
  uint16_t type;
  memcpy(&type, hello + 4, 2);
  if (len < 0 || type != NF_MP_HELLO) return -1;
  nf_mp_reader hr = {hello, (uint32_t)len, NF_MP_HEADER, 0, 0, 0};
  int pid = (int)nf_mp_get_u32(&hr);
  launcher_done = 0;
  pthread_create(&launcher, NULL, launcher_main, NULL);
  return pid;
}

/* The launcher goes away: the runtime sees its connection close. */
static __attribute__((unused)) void drop_runtime(void) {
  shutdown(conn, SHUT_RDWR);
  pthread_join(launcher, NULL);
  close(conn);
  conn = -1;
}

/* Sends a request and waits for its reply (10 s): its status, message and body. */
static __attribute__((unused)) int request(nf_mp_writer* w, char* msg, size_t msglen, nf_mp_reader* body) {
  nf_mp_end(w);
  if (w->overflow) return -997;
  uint32_t id;
  memcpy(&id, w->buf + 8, 4);
  pthread_mutex_lock(&lmu);
  reply_ready = 0;
  pthread_mutex_unlock(&lmu);
  if (send(conn, w->buf, w->len, MSG_NOSIGNAL) != (ssize_t)w->len) return -999;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&lmu);
  while (!(reply_ready && reply_id == id) && !launcher_done)
    if (pthread_cond_timedwait(&lcv, &lmu, &deadline) != 0) break;
  int have = reply_ready && reply_id == id;
  uint32_t len = reply_len;
  if (have) memcpy(body_buf, reply_buf, len);
  reply_ready = 0;
  pthread_mutex_unlock(&lmu);
  if (!have) {
    snprintf(msg, msglen, "no reply");
    return -998;
  }
  nf_mp_reader r = {body_buf, len, 12, 0, 0, 0};
  int32_t status = (int32_t)nf_mp_get_u32(&r);
  nf_mp_get_str(&r, msg, (uint32_t)msglen);
  if (body) *body = r;
  return status;
}

static nf_mp_writer w;
static __attribute__((unused)) int load_path(const char* name, const char* path, int iso, int n, char* msg) {
  nf_mp_begin(&w, NF_MP_LOAD, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_str(&w, path);
  nf_mp_u8(&w, (uint8_t)iso);
  nf_mp_u8(&w, 0);
  nf_mp_u16(&w, (uint16_t)n);
  nf_mp_u32(&w, 0);
  return request(&w, msg, 512, NULL);
}
static __attribute__((unused)) int load(const char* name, const char* lib, int iso, int n, char* msg) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, lib);
  return load_path(name, path, iso, n, msg);
}
static __attribute__((unused)) int route(const char* name, int on) {
  char msg[512];
  nf_mp_begin(&w, NF_MP_ROUTE, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_u8(&w, (uint8_t)on);
  return request(&w, msg, sizeof msg, NULL);
}
static __attribute__((unused)) int unload(const char* name, char* msg) {
  nf_mp_begin(&w, NF_MP_UNLOAD, next_id++, 0);
  nf_mp_str(&w, name);
  nf_mp_u32(&w, 2000);
  return request(&w, msg, 512, NULL);
}
/* STATS: calls/failures/faults of one callee, -1 if absent. */
static __attribute__((unused)) int stats(const char* name, uint64_t* calls, uint64_t* failures_, uint64_t* faults, int* routed) {
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

/* Loads the runtime into this process and connects it; 0 or -1. */
static __attribute__((unused)) int start_runtime(void** rt_out, int (**start_out)(const char*)) {
  char rt_path[1200];
  snprintf(rt_path, sizeof rt_path, "%s/libnightfuse_merge.so", dir);
  void* rt = dlopen(rt_path, RTLD_NOW | RTLD_LOCAL);
  if (!rt) {
    printf("# %s\n", dlerror());
    return -1;
  }
  int (*start)(const char*) = (int (*)(const char*))dlsym(rt, "nightfuse_merge_start");
  *rt_out = rt;
  *start_out = start;
  return start ? 0 : -1;
}

#endif /* NIGHTFUSE_TEST_MERGE_HOST_H_ */
