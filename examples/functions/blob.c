/* Blob: returns a payload larger than the 960-byte inline area, so it travels
 * through a shared-memory file. Input: decimal byte count (default 65536).
 * Output byte i is 'a' + (i % 26). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faas/worker_v1_interface.h"

struct worker_context {
  void* caller_context;
  faas_append_output_fn_t append_output_fn;
};

int faas_init(void) { return 0; }

int faas_create_func_worker(void* caller_context, faas_invoke_func_fn_t invoke_func_fn,
                            faas_append_output_fn_t append_output_fn, void** worker_handle) {
  (void)invoke_func_fn;
  struct worker_context* ctx = malloc(sizeof *ctx);
  if (!ctx) return -1;
  ctx->caller_context = caller_context;
  ctx->append_output_fn = append_output_fn;
  *worker_handle = ctx;
  return 0;
}

int faas_destroy_func_worker(void* worker_handle) {
  free(worker_handle);
  return 0;
}

int faas_func_call(void* worker_handle, const char* input, size_t input_length) {
  struct worker_context* ctx = worker_handle;
  char num[32] = {0};
  size_t n = 65536;
  if (input_length > 0) {
    if (input_length >= sizeof num) return -1;
    memcpy(num, input, input_length);
    char* end;
    unsigned long long v = strtoull(num, &end, 10);
    if (*end != '\0' && *end != '\n') return -1;
    if (v > (64ull << 20)) return -1; /* refuse > 64 MiB */
    n = (size_t)v;
  }
  char chunk[4096];
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < sizeof chunk ? n - done : sizeof chunk;
    for (size_t i = 0; i < k; i++) chunk[i] = (char)('a' + (done + i) % 26);
    ctx->append_output_fn(ctx->caller_context, chunk, k);
    done += k;
  }
  return 0;
}
