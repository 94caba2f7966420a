/*
 * nightfuse-worker: hosts one worker_v1 function library and speaks
 * Nightcore's worker IPC protocol (what Nightcore's func_worker_v1 does), plus
 * the routing hook that run-time merging patches (see include/nightfuse/route_hook.h).
 *
 * Usage: nightfuse-worker <path/to/libfunc.so>
 * Environment (set by the launcher): FAAS_FUNC_ID, FAAS_CLIENT_ID,
 * FAAS_FPROCESS_ID, FAAS_MSG_PIPE_FD, FAAS_ROOT_PATH_FOR_IPC,
 * optionally FAAS_USE_ENGINE_SOCKET=1.
 *
 * One process = one worker = one client id; calls run strictly one at a time
 * on the main thread; one nested call outstanding at a time (as func_worker_v1
 * in its default mode).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "faas/worker_v1_interface.h"
#include "func_config.h"
#include "nightfuse/ipc.h"
#include "nightfuse/route_hook.h"

/* ---- the exported routing hook (see route_hook.h) ---- */
__attribute__((visibility("default"))) _Atomic(nightfuse_route_fn) nightfuse_route_hook = NULL;

typedef int (*init_fn)(void);
typedef int (*create_fn)(void*, faas_invoke_func_fn_t, faas_append_output_fn_t, void**);
typedef int (*call_fn)(void*, const char*, size_t);
typedef int (*grpc_call_fn)(void*, const char*, const char*, size_t);
typedef int (*destroy_fn)(void*);

/* Memory handed out by invoke_func_fn, released when the current call returns. */
typedef struct {
  void* ptr;
  size_t len;
  int mapped;      /* 1: munmap, 0: free */
  char* unlink_path; /* .o file to remove, or NULL */
} deferred_release;

static struct {
  int func_id;
  int client_id;
  const char* root;
  int in_fd, out_fd, sock_fd;
  nf_func_config config;
  const nf_func_entry* self;
  call_fn func_call;
  grpc_call_fn func_call_grpc;
  void* handle;
  /* current call state */
  int in_call;
  uint64_t current_call_id;
  char* out_buf;
  size_t out_len, out_cap;
  uint32_t next_call_id;
  deferred_release* deferred;
  size_t n_deferred, cap_deferred;
} W;

static void logmsg(const char* level, const char* fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  /* JSON-escape the few characters our messages can contain. */
  char esc[2100];
  size_t j = 0;
  for (size_t i = 0; text[i] && j + 3 < sizeof esc; i++) {
    char ch = text[i];
    if (ch == '"' || ch == '\\') { esc[j++] = '\\'; esc[j++] = ch; }
    else if ((unsigned char)ch < 0x20) esc[j++] = ' ';
    else esc[j++] = ch;
  }
  esc[j] = '\0';
  fprintf(stderr, "{\"level\":\"%s\",\"component\":\"worker\",\"func_id\":%d,\"client_id\":%d,\"pid\":%d,\"msg\":\"%s\"}\n",
          level, W.func_id, W.client_id, (int)getpid(), esc);
}

static _Noreturn void die(const char* fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  logmsg("fatal", "%s", text);
  exit(1);
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int write_full(int fd, const void* buf, size_t len) {
  const char* p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Returns 1 on a full read, 0 on EOF before any byte, -1 on error/short EOF. */
static int read_full(int fd, void* buf, size_t len) {
  char* p = buf;
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, p + got, len - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) return got == 0 ? 0 : -1;
    got += (size_t)n;
  }
  return 1;
}

static int send_frame(nf_message* m) {
  nf_put_u64(m, NF_OFF_SEND_TIMESTAMP, (uint64_t)now_us());
  /* One write per frame: atomic on a FIFO (1024 <= PIPE_BUF). */
  return write_full(W.out_fd, m->bytes, NF_MESSAGE_SIZE);
}

static void shm_path(char* out, size_t n, uint64_t full_call_id, const char* suffix) {
  snprintf(out, n, "%s/shm/%llu.%s", W.root, (unsigned long long)full_call_id, suffix);
}

/* Creates a payload file exactly as Nightcore does (O_EXCL, 0664). */
static int shm_create(uint64_t full_call_id, const char* suffix, const char* data, size_t len) {
  char path[4096];
  shm_path(path, sizeof path, full_call_id, suffix);
  int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0664);
  if (fd < 0) {
    logmsg("error", "create %s: %s", path, strerror(errno));
    return -1;
  }
  int rc = write_full(fd, data, len);
  if (rc) logmsg("error", "write %s: %s", path, strerror(errno));
  close(fd);
  if (rc) unlink(path);
  return rc;
}

/* Maps a payload file read-only; *len must match the frame's size. */
static void* shm_map(uint64_t full_call_id, const char* suffix, size_t expect_len) {
  char path[4096];
  shm_path(path, sizeof path, full_call_id, suffix);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    logmsg("error", "open %s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size != expect_len) {
    logmsg("error", "%s has size %lld, frame says %zu", path, (long long)st.st_size, expect_len);
    close(fd);
    return NULL;
  }
  void* p = mmap(NULL, expect_len, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    logmsg("error", "mmap %s: %s", path, strerror(errno));
    return NULL;
  }
  return p;
}

static void defer_release(void* ptr, size_t len, int mapped, char* unlink_path) {
  if (W.n_deferred == W.cap_deferred) {
    size_t cap = W.cap_deferred ? W.cap_deferred * 2 : 8;
    deferred_release* t = realloc(W.deferred, cap * sizeof *t);
    if (!t) die("out of memory");
    W.deferred = t;
    W.cap_deferred = cap;
  }
  W.deferred[W.n_deferred++] = (deferred_release){ptr, len, mapped, unlink_path};
}

static void release_deferred(void) {
  for (size_t i = 0; i < W.n_deferred; i++) {
    deferred_release* d = &W.deferred[i];
    if (d->mapped) munmap(d->ptr, d->len);
    else free(d->ptr);
    if (d->unlink_path) {
      unlink(d->unlink_path);
      free(d->unlink_path);
    }
  }
  W.n_deferred = 0;
}

static void append_output(void* ctx, const char* data, size_t len) {
  (void)ctx;
  if (!W.in_call || len == 0) return;
  if (W.out_len + len > W.out_cap) {
    size_t cap = W.out_cap ? W.out_cap : 4096;
    while (cap < W.out_len + len) cap *= 2;
    char* t = realloc(W.out_buf, cap);
    if (!t) die("out of memory growing output to %zu bytes", cap);
    W.out_buf = t;
    W.out_cap = cap;
  }
  memcpy(W.out_buf + W.out_len, data, len);
  W.out_len += len;
}

/* Resolves "Name", "grpc:Svc" or "grpc:Svc/Method" to (func_id, method_id). */
static int resolve_callee(const char* name, int* func_id, int* method_id) {
  *method_id = 0;
  const nf_func_entry* e = nf_func_config_by_name(&W.config, name);
  if (e) {
    *func_id = e->id;
    return 0;
  }
  const char* slash = strncmp(name, "grpc:", 5) == 0 ? strrchr(name, '/') : NULL;
  if (!slash) return -1;
  char svc[512];
  size_t n = (size_t)(slash - name);
  if (n >= sizeof svc) return -1;
  memcpy(svc, name, n);
  svc[n] = '\0';
  e = nf_func_config_by_name(&W.config, svc);
  if (!e) return -1;
  for (int i = 0; i < e->n_methods; i++) {
    if (strcmp(e->methods[i], slash + 1) == 0) {
      *func_id = e->id;
      *method_id = i;
      return 0;
    }
  }
  return -1;
}

static int invoke_ipc(int origin_func_id, const char* func_name, const char* input, size_t input_length,
                      const char** output, size_t* output_length) {
  *output = NULL;
  *output_length = 0;
  if (!W.in_call) {
    logmsg("error", "invoke_func(%s) outside of a call", func_name);
    return -1;
  }
  int callee, method;
  if (resolve_callee(func_name, &callee, &method)) {
    logmsg("error", "invoke_func: unknown function '%s'", func_name);
    return -1;
  }
  if (input_length > INT32_MAX) return -1;
  uint64_t id = nf_full_call_id((uint32_t)callee, (uint32_t)method, (uint32_t)W.client_id, W.next_call_id++);
  nf_message m;
  nf_msg_init(&m, NF_MSG_INVOKE_FUNC, id);
  nf_put_u64(&m, NF_OFF_PARENT_CALL_ID, W.current_call_id);
  if (origin_func_id > 0 && origin_func_id != W.func_id) {
    m.bytes[NF_OFF_ORIGIN_FLAG] = 1;
    m.bytes[NF_OFF_ORIGIN_FUNC] = (uint8_t)origin_func_id;
  }
  int input_in_shm = input_length > NF_INLINE_CAPACITY;
  if (input_in_shm) {
    if (shm_create(id, "i", input, input_length)) return -1;
    nf_msg_set_payload_size(&m, -(int32_t)input_length);
  } else {
    if (input_length) memcpy(m.bytes + NF_OFF_INLINE, input, input_length);
    nf_msg_set_payload_size(&m, (int32_t)input_length);
  }
  int rc = -1;
  if (send_frame(&m)) {
    logmsg("error", "send INVOKE_FUNC: %s", strerror(errno));
    goto out;
  }
  for (;;) {
    int r = read_full(W.in_fd, m.bytes, NF_MESSAGE_SIZE);
    if (r <= 0) die("engine connection lost while waiting for nested call %llu", (unsigned long long)id);
    enum nf_msg_type t = nf_msg_type_of(&m);
    if ((t == NF_MSG_FUNC_CALL_COMPLETE || t == NF_MSG_FUNC_CALL_FAILED) && nf_msg_full_call_id(&m) == id) break;
    logmsg("warn", "unexpected frame type %d for call %llu while waiting for %llu", (int)t,
           (unsigned long long)nf_msg_full_call_id(&m), (unsigned long long)id);
  }
  if (nf_msg_type_of(&m) == NF_MSG_FUNC_CALL_FAILED) goto out;
  int32_t size = nf_msg_payload_size(&m);
  if (size >= 0) {
    if (size > NF_INLINE_CAPACITY) goto out;
    if (size > 0) {
      char* copy = malloc((size_t)size);
      if (!copy) goto out;
      memcpy(copy, m.bytes + NF_OFF_INLINE, (size_t)size);
      defer_release(copy, (size_t)size, 0, NULL);
      *output = copy;
    }
    *output_length = (size_t)size;
    rc = 0;
  } else {
    size_t len = (size_t)(-(int64_t)size);
    char path[4096];
    shm_path(path, sizeof path, id, "o");
    void* p = shm_map(id, "o", len);
    if (!p) {
      unlink(path);
      goto out;
    }
    defer_release(p, len, 1, strdup(path));
    *output = p;
    *output_length = len;
    rc = 0;
  }
out:
  if (input_in_shm) {
    char path[4096];
    shm_path(path, sizeof path, id, "i");
    unlink(path);
  }
  return rc;
}

__attribute__((visibility("default"))) int nightfuse_host_invoke_ipc(const char* func_name, const char* input,
                                                                     size_t input_length, const char** output,
                                                                     size_t* output_length) {
  return invoke_ipc(0, func_name, input, input_length, output, output_length);
}

__attribute__((visibility("default"))) int nightfuse_host_invoke_ipc_from(const char* origin, const char* func_name,
                                                                          const char* input, size_t input_length,
                                                                          const char** output, size_t* output_length) {
  const nf_func_entry* e = origin ? nf_func_config_by_name(&W.config, origin) : NULL;
  return invoke_ipc(e ? e->id : 0, func_name, input, input_length, output, output_length);
}

static int invoke_func(void* ctx, const char* func_name, const char* input, size_t input_length,
                       const char** output, size_t* output_length) {
  (void)ctx;
  *output = NULL;
  *output_length = 0;
  nightfuse_route_fn hook = atomic_load_explicit(&nightfuse_route_hook, memory_order_acquire);
  if (hook) {
    const char* out = NULL;
    size_t out_len = 0;
    int r = hook(func_name, input, input_length, &out, &out_len);
    if (r != NIGHTFUSE_ROUTE_PASS) {
      if (r != 0) {
        free((void*)out);
        return -1;
      }
      if (out) defer_release((void*)out, out_len, 0, NULL);
      *output = out;
      *output_length = out_len;
      return 0;
    }
  }
  return nightfuse_host_invoke_ipc(func_name, input, input_length, output, output_length);
}

static void handle_dispatch(nf_message* m) {
  int64_t recv_ts = now_us();
  uint64_t id = nf_msg_full_call_id(m);
  int64_t sent = (int64_t)nf_get_u64(m, NF_OFF_SEND_TIMESTAMP);
  int32_t dispatch_delay = sent > 0 ? (int32_t)(recv_ts - sent) : 0;
  int32_t size = nf_msg_payload_size(m);
  const char* input = (const char*)m->bytes + NF_OFF_INLINE;
  size_t input_len = 0;
  void* mapped = NULL;
  int ok = 1;
  if (size >= 0) {
    if (size > NF_INLINE_CAPACITY) ok = 0;
    else input_len = (size_t)size;
  } else {
    input_len = (size_t)(-(int64_t)size);
    mapped = shm_map(id, "i", input_len);
    if (!mapped) ok = 0;
    input = mapped;
  }
  int rc = -1;
  int64_t start = now_us();
  if (ok) {
    W.in_call = 1;
    W.current_call_id = id;
    W.out_len = 0;
    uint32_t method = nf_id_method(id);
    if (W.func_call_grpc && W.self && W.self->n_methods > 0 && method < (uint32_t)W.self->n_methods)
      rc = W.func_call_grpc(W.handle, W.self->methods[method], input, input_len);
    else
      rc = W.func_call(W.handle, input, input_len);
    W.in_call = 0;
    release_deferred();
  }
  int32_t processing = (int32_t)(now_us() - start);
  if (mapped) munmap(mapped, input_len);

  nf_message r;
  if (rc == 0 && W.out_len > INT32_MAX) rc = -1;
  if (rc == 0) {
    nf_msg_init(&r, NF_MSG_FUNC_CALL_COMPLETE, id);
    if (W.out_len <= NF_INLINE_CAPACITY) {
      if (W.out_len) memcpy(r.bytes + NF_OFF_INLINE, W.out_buf, W.out_len);
      nf_msg_set_payload_size(&r, (int32_t)W.out_len);
    } else if (shm_create(id, "o", W.out_buf, W.out_len) == 0) {
      nf_msg_set_payload_size(&r, -(int32_t)W.out_len);
    } else {
      nf_msg_init(&r, NF_MSG_FUNC_CALL_FAILED, id);
    }
  } else {
    nf_msg_init(&r, NF_MSG_FUNC_CALL_FAILED, id);
  }
  nf_put_u32(&r, NF_OFF_DISPATCH_DELAY, (uint32_t)dispatch_delay);
  nf_put_u32(&r, NF_OFF_PROCESSING_TIME, (uint32_t)processing);
  if (send_frame(&r)) die("send result: %s", strerror(errno));
  /* Do not keep a large output buffer around between calls. */
  if (W.out_cap > (1u << 20)) {
    free(W.out_buf);
    W.out_buf = NULL;
    W.out_cap = 0;
  }
}

static int env_int(const char* name, int dflt) {
  const char* v = getenv(name);
  if (!v || !*v) return dflt;
  char* end;
  long x = strtol(v, &end, 10);
  if (*end) die("environment variable %s=%s is not an integer", name, v);
  return (int)x;
}

static char* read_config(int fd, size_t* len_out) {
  uint32_t len;
  if (read_full(fd, &len, 4) != 1) die("cannot read config length from fd %d", fd);
  if (len > (64u << 20)) die("config length %u from fd %d is implausible", len, fd);
  char* buf = malloc(len + 1);
  if (!buf) die("out of memory");
  if (len && read_full(fd, buf, len) != 1) die("cannot read %u config bytes from fd %d", len, fd);
  buf[len] = '\0';
  *len_out = len;
  return buf;
}

int main(int argc, char** argv) {
  W.func_id = env_int("FAAS_FUNC_ID", -1);
  W.client_id = env_int("FAAS_CLIENT_ID", -1);
  if (argc != 2) die("usage: %s <path/to/function-library.so>", argv[0]);
  if (W.func_id < 1 || W.func_id > 255) die("FAAS_FUNC_ID must be 1..255");
  if (W.client_id < 1 || W.client_id > 16383) die("FAAS_CLIENT_ID must be 1..16383");
  W.root = getenv("FAAS_ROOT_PATH_FOR_IPC");
  if (!W.root || !*W.root) W.root = "/dev/shm/faas_ipc";
  int msg_fd = env_int("FAAS_MSG_PIPE_FD", 3);
  int use_socket = env_int("FAAS_USE_ENGINE_SOCKET", 0) == 1;
  if (getenv("FAAS_ENGINE_TCP_PORT") && *getenv("FAAS_ENGINE_TCP_PORT"))
    die("FAAS_ENGINE_TCP_PORT (engine over TCP) is not supported by nightfuse-worker");
  signal(SIGPIPE, SIG_IGN);

  void* lib = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
  if (!lib) die("dlopen %s: %s", argv[1], dlerror());
  init_fn init = (init_fn)dlsym(lib, "faas_init");
  create_fn create = (create_fn)dlsym(lib, "faas_create_func_worker");
  W.func_call = (call_fn)dlsym(lib, "faas_func_call");
  destroy_fn destroy = (destroy_fn)dlsym(lib, "faas_destroy_func_worker");
  W.func_call_grpc = (grpc_call_fn)dlsym(lib, "faas_func_call_grpc");
  if (!init || !create || !W.func_call || !destroy)
    die("%s does not export the worker_v1 interface (faas_init, faas_create_func_worker, faas_func_call, faas_destroy_func_worker)", argv[1]);
  if (init() != 0) die("faas_init of %s failed", argv[1]);

  size_t cfg_len;
  char* cfg_text = read_config(msg_fd, &cfg_len);
  char err[256];
  if (nf_func_config_parse(cfg_text, cfg_len, &W.config, err, sizeof err)) die("%s", err);
  free(cfg_text);
  W.self = nf_func_config_by_id(&W.config, W.func_id);
  if (!W.self) die("func_id %d is not in the config", W.func_id);

  W.sock_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s/engine.sock", W.root) >= (int)sizeof addr.sun_path)
    die("IPC root path %s is too long for a unix socket", W.root);
  if (connect(W.sock_fd, (struct sockaddr*)&addr, sizeof addr) != 0)
    die("connect %s: %s", addr.sun_path, strerror(errno));

  char in_path[4096], out_path[4096];
  snprintf(in_path, sizeof in_path, "%s/fifo/worker_%d_input", W.root, W.client_id);
  snprintf(out_path, sizeof out_path, "%s/fifo/worker_%d_output", W.root, W.client_id);
  if (!use_socket) {
    /* Must be open for reading before the handshake: the engine opens the
     * write end non-blocking, which fails with ENXIO without a reader. */
    W.in_fd = open(in_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (W.in_fd < 0) die("open %s: %s", in_path, strerror(errno));
  }
  nf_message m;
  nf_msg_init(&m, NF_MSG_FUNC_WORKER_HANDSHAKE, nf_full_call_id((uint32_t)W.func_id, 0, (uint32_t)W.client_id, 0));
  if (write_full(W.sock_fd, m.bytes, NF_MESSAGE_SIZE)) die("send handshake: %s", strerror(errno));
  if (read_full(W.sock_fd, m.bytes, NF_MESSAGE_SIZE) != 1) die("engine closed the connection during the handshake");
  if (nf_msg_type_of(&m) != NF_MSG_HANDSHAKE_RESPONSE) die("handshake: unexpected frame type %d", nf_msg_type_of(&m));
  uint32_t flags = nf_get_u32(&m, NF_OFF_FLAGS);
  if (flags & NF_FLAG_USE_FIFO_FOR_NESTED_CALL)
    die("the engine asks for FIFO nested-call mode (--use_fifo_for_nested_call), which nightfuse-worker does not support");
  if (use_socket) {
    W.in_fd = W.out_fd = W.sock_fd;
  } else {
    W.out_fd = open(out_path, O_WRONLY | O_CLOEXEC);
    if (W.out_fd < 0) die("open %s: %s", out_path, strerror(errno));
    int fl = fcntl(W.in_fd, F_GETFL);
    fcntl(W.in_fd, F_SETFL, fl & ~O_NONBLOCK);
  }

  if (create(NULL, invoke_func, append_output, &W.handle) != 0) die("faas_create_func_worker failed");
  logmsg("info", "serving %s from %s", W.self->name, argv[1]);

  for (;;) {
    int r = read_full(W.in_fd, m.bytes, NF_MESSAGE_SIZE);
    if (r == 0) break;
    if (r < 0) die("read from engine: %s", errno ? strerror(errno) : "short frame");
    enum nf_msg_type t = nf_msg_type_of(&m);
    if (t == NF_MSG_DISPATCH_FUNC_CALL) handle_dispatch(&m);
    else logmsg("warn", "ignoring frame of type %d", (int)t);
  }
  logmsg("info", "engine closed the connection; exiting");
  destroy(W.handle);
  nf_func_config_free(&W.config);
  free(W.out_buf);
  free(W.deferred);
  return 0;
}
