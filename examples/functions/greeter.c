/* grpc:nightfuse.examples.Greeter — a gRPC service in C (see greeter.proto).
 * Uses the Nightfuse extension faas_func_call_grpc() to learn the method:
 *   SayHello(HelloRequest{name}) -> HelloReply{message: "Hello, <name>"}
 *   Shout(HelloRequest{name})    -> HelloReply{message: upper-case name + "!"}
 * The gateway passes protobuf bytes through untouched; this decodes the one
 * string field it needs by hand to stay dependency-free. */
#include <ctype.h>
#include <stdint.h>
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

static int read_varint(const uint8_t** p, const uint8_t* end, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return -1;
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

/* Finds field 1 (string) of a message; unknown fields are skipped. */
static int decode_name(const uint8_t* p, size_t len, const uint8_t** name, size_t* name_len) {
  const uint8_t* end = p + len;
  *name = NULL;
  *name_len = 0;
  while (p < end) {
    uint64_t key, v;
    if (read_varint(&p, end, &key)) return -1;
    switch (key & 7) {
      case 0: if (read_varint(&p, end, &v)) return -1; break;
      case 1: if (end - p < 8) return -1; p += 8; break;
      case 5: if (end - p < 4) return -1; p += 4; break;
      case 2:
        if (read_varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
        if ((key >> 3) == 1) { *name = p; *name_len = (size_t)v; }
        p += v;
        break;
      default: return -1;
    }
  }
  return 0;
}

static void emit_reply(struct worker_context* ctx, const char* msg, size_t len) {
  uint8_t hdr[11];
  size_t n = 0;
  hdr[n++] = 0x0A; /* field 1, length-delimited */
  uint64_t v = len;
  do {
    uint8_t b = v & 0x7F;
    v >>= 7;
    hdr[n++] = b | (v ? 0x80 : 0);
  } while (v);
  ctx->append_output_fn(ctx->caller_context, (const char*)hdr, n);
  ctx->append_output_fn(ctx->caller_context, msg, len);
}

int faas_func_call_grpc(void* worker_handle, const char* method, const char* input, size_t input_length) {
  struct worker_context* ctx = worker_handle;
  const uint8_t* name;
  size_t name_len;
  if (decode_name((const uint8_t*)input, input_length, &name, &name_len)) return -1;
  char* msg = malloc(name_len + 16);
  if (!msg) return -1;
  size_t n = 0;
  if (strcmp(method, "SayHello") == 0) {
    memcpy(msg, "Hello, ", 7);
    n = 7;
    memcpy(msg + n, name, name_len);
    n += name_len;
  } else if (strcmp(method, "Shout") == 0) {
    for (size_t i = 0; i < name_len; i++) msg[n++] = (char)toupper(name[i]);
    msg[n++] = '!';
  } else {
    free(msg);
    return -1;
  }
  emit_reply(ctx, msg, n);
  free(msg);
  return 0;
}

/* Without a method (an older host, or an HTTP call to the grpc: name): SayHello. */
int faas_func_call(void* worker_handle, const char* input, size_t input_length) {
  return faas_func_call_grpc(worker_handle, "SayHello", input, input_length);
}
