/* Callees for the merge runtime's tests. Input commands:
 *   "segv" "bus" "fpe" "ill" "overflow"  fault that way (overflow: unbounded recursion)
 *   "mallocfault"  faults inside malloc_stats(), i.e. with malloc's arena lock
 *                  held (stderr swapped for a stream whose write faults)
 *   "bigout"       appends an output that cannot be allocated
 *   "sleep:N"      sleeps N ms, then echoes
 *   "call:F:X"     nested call to F with input X, outputs F's output
 *   anything else  echoed unchanged */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "faas/worker_v1_interface.h"

struct worker_context {
  void* caller_context;
  faas_invoke_func_fn_t invoke_func_fn;
  faas_append_output_fn_t append_output_fn;
};

int faas_init(void) { return 0; }

int faas_create_func_worker(void* caller_context, faas_invoke_func_fn_t invoke_func_fn,
                            faas_append_output_fn_t append_output_fn, void** worker_handle) {
  struct worker_context* ctx = malloc(sizeof *ctx);
  if (!ctx) return -1;
  ctx->caller_context = caller_context;
  ctx->invoke_func_fn = invoke_func_fn;
  ctx->append_output_fn = append_output_fn;
  *worker_handle = ctx;
  return 0;
}

int faas_destroy_func_worker(void* worker_handle) {
  free(worker_handle);
  return 0;
}

#pragma GCC diagnostic ignored "-Winfinite-recursion"
__attribute__((noinline)) static int recurse(int depth) {
  volatile char pad[512];
  pad[0] = (char)depth;
  return recurse(depth + 1) + pad[0];
}

/* One page of an empty file, mapped once per process (so the fault-cycle
 * tests count no fd or mapping of ours; unmapped at dlclose): touching it
 * raises SIGBUS. */
static volatile char* page;
__attribute__((destructor)) static void unmap_page(void) {
  if (page) munmap((void*)page, 4096);
}

static int bus_error(void) {
  if (!page) {
    int fd = memfd_create("nf-bus", MFD_CLOEXEC);
    if (fd < 0) return 1;
    void* p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return 1;
    page = p;
  }
  page[0] = 1;
  return 1;
}

__attribute__((no_sanitize("undefined"))) static ssize_t faulting_write(void* cookie, const char* buf, size_t size) {
  (void)cookie;
  (void)buf;
  volatile int* p = NULL;
  *p = (int)size;
  return (ssize_t)size;
}

static int fault_in_malloc_stats(void) {
  cookie_io_functions_t io = {.write = faulting_write};
  FILE* f = fopencookie(NULL, "w", io);
  if (!f) return 1;
  setvbuf(f, NULL, _IONBF, 0);
  free(malloc(1000)); /* a chunk in this thread's tcache: its exit must free it, under the arena lock */
  stderr = f;
  malloc_stats(); /* prints to stderr with the arena lock held */
  return 1;
}

/* Real faults, not sanitizer reports: the runtime must see the signals. */
__attribute__((noinline, no_sanitize("undefined"))) static int segv(void) {
  volatile int* p = NULL;
  *p = 1;
  return 1;
}

__attribute__((noinline, no_sanitize("undefined"))) static int fpe(void) {
  volatile int zero = 0;
  return 10 / zero;
}

static int starts(const char* in, size_t len, const char* p) {
  size_t n = strlen(p);
  return len >= n && memcmp(in, p, n) == 0;
}

static int is(const char* in, size_t len, const char* p) { return len == strlen(p) && memcmp(in, p, len) == 0; }

int faas_func_call(void* worker_handle, const char* input, size_t len) {
  struct worker_context* ctx = worker_handle;
  if (is(input, len, "segv")) return segv();
  if (is(input, len, "bus")) return bus_error();
  if (is(input, len, "fpe")) return fpe();
  if (is(input, len, "ill")) __builtin_trap();
  if (is(input, len, "overflow")) return recurse(1) == 0;
  if (is(input, len, "mallocfault")) return fault_in_malloc_stats();
  if (is(input, len, "bigout")) {
    ctx->append_output_fn(ctx->caller_context, input, (size_t)1 << 41);
    return 0;
  }
  if (starts(input, len, "sleep:")) {
    char num[16] = {0};
    memcpy(num, input + 6, len - 6 < 15 ? len - 6 : 15);
    long ms = atol(num);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (starts(input, len, "call:")) {
    const char* f = input + 5;
    const char* colon = memchr(f, ':', len - 5);
    if (!colon) return 1;
    char name[128];
    size_t fl = (size_t)(colon - f);
    if (fl >= sizeof name) return 1;
    memcpy(name, f, fl);
    name[fl] = '\0';
    const char* out;
    size_t out_len;
    size_t rest = len - (size_t)(colon + 1 - input);
    if (ctx->invoke_func_fn(ctx->caller_context, name, colon + 1, rest, &out, &out_len) != 0) return 1;
    ctx->append_output_fn(ctx->caller_context, out, out_len);
    return 0;
  }
  ctx->append_output_fn(ctx->caller_context, input, len);
  return 0;
}
