/* Bar: appends ", World\n" to its input. */
#include <stdlib.h>
#include <string.h>

#include "faas/worker_v1_interface.h"

struct worker_context {
  void* caller_context;
  faas_append_output_fn_t append_output_fn;
};

static const char kSuffix[] = ", World\n";

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
  ctx->append_output_fn(ctx->caller_context, input, input_length);
  ctx->append_output_fn(ctx->caller_context, kSuffix, sizeof kSuffix - 1);
  return 0;
}
