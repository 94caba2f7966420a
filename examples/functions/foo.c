/* Foo: calls Bar with its own input and prefixes Bar's output.
 * "Hello" -> "From function Bar: Hello, World\n" */
#include <stdlib.h>
#include <string.h>

#include "faas/worker_v1_interface.h"

struct worker_context {
  void* caller_context;
  faas_invoke_func_fn_t invoke_func_fn;
  faas_append_output_fn_t append_output_fn;
};

static const char kPrefix[] = "From function Bar: ";

int faas_init(void) { return 0; }

int faas_create_func_worker(void* caller_context, faas_invoke_func_fn_t invoke_func_fn,
                            faas_append_output_fn_t append_output_fn, void** worker_handle) {
  /* The whole struct, not sizeof(pointer) as Nightcore's example does. */
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

int faas_func_call(void* worker_handle, const char* input, size_t input_length) {
  struct worker_context* ctx = worker_handle;
  const char* out;
  size_t out_len;
  if (ctx->invoke_func_fn(ctx->caller_context, "Bar", input, input_length, &out, &out_len) != 0) return -1;
  ctx->append_output_fn(ctx->caller_context, kPrefix, strlen(kPrefix));
  ctx->append_output_fn(ctx->caller_context, out, out_len);
  return 0;
}
