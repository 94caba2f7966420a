/*
 * worker_v1 C ABI for Nightfuse function libraries.
 *
 * Written for Nightfuse from the published description of Nightcore's
 * worker_v1 interface: same symbol names, signatures and semantics, so a
 * library built against Nightcore's header loads unchanged (and vice versa).
 *
 * A function library is a -shared -fPIC object exporting, with default
 * visibility, the four faas_* symbols below. All return 0 on success.
 *
 *  - faas_init() runs once per process right after the library is loaded.
 *  - faas_create_func_worker() runs once per worker; caller_context must be
 *    handed back unchanged to both callbacks.
 *  - faas_func_call() runs one call; never concurrently on the same handle.
 *    `input` is not NUL-terminated and is valid only during the call.
 *    Output is the concatenation of every append_output_fn() made during it.
 *    A non-zero return fails the call (output discarded).
 *  - invoke_func_fn() makes a nested call; returns 0 on success. On success
 *    *output_data points to runtime-owned memory valid until the current
 *    faas_func_call() returns. Only call it from inside faas_func_call().
 *
 * Nightfuse extensions (optional, looked up with dlsym):
 *  - faas_func_call_grpc(): if exported, a worker serving a `grpc:<Service>`
 *    entry calls it instead of faas_func_call(), with the method name taken
 *    from the entry's grpcMethods[method_id]. Without it, faas_func_call() is
 *    called and the method is not visible to the library.
 *  - invoke_func_fn() accepts "grpc:<Service>/<Method>" as func_name to call a
 *    gRPC service method (a bare "grpc:<Service>" calls method id 0, as in
 *    Nightcore).
 */
#ifndef FAAS_WORKER_V1_INTERFACE_H_
#define FAAS_WORKER_V1_INTERFACE_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*faas_append_output_fn_t)(void* caller_context, const char* data, size_t length);

typedef int (*faas_invoke_func_fn_t)(void* caller_context, const char* func_name,
                                     const char* input_data, size_t input_length,
                                     const char** output_data, size_t* output_length);

int faas_init(void);

int faas_create_func_worker(void* caller_context, faas_invoke_func_fn_t invoke_func_fn,
                            faas_append_output_fn_t append_output_fn, void** worker_handle);

int faas_destroy_func_worker(void* worker_handle);

int faas_func_call(void* worker_handle, const char* input, size_t input_length);

/* Nightfuse extension, optional: see above. */
int faas_func_call_grpc(void* worker_handle, const char* method, const char* input,
                        size_t input_length);

#ifdef __cplusplus
}
#endif

#endif /* FAAS_WORKER_V1_INTERFACE_H_ */
