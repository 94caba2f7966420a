/*
 * The worker host's routing hook: the one place a merged callee enters the
 * nested-call path. See docs in README ("Routing hook").
 *
 * invoke_func_fn() loads `nightfuse_route_hook` once (acquire). When it is
 * NULL (the default) the call goes out over IPC; the cost of the check is that
 * single atomic load. When set, the hook is called first:
 *   - return NIGHTFUSE_ROUTE_PASS to send the call over IPC as usual;
 *   - return 0 with *output and *output_length set for a successful local call.
 *     *output must come from malloc() (or be NULL when the length is 0): the
 *     host takes ownership and frees it when the current faas_func_call()
 *     returns, which gives merged calls the same output lifetime as IPC calls;
 *   - return any other value for a failed call (the caller sees -1).
 * The hook runs on the thread that called invoke_func_fn().
 *
 * nightfuse_host_invoke_ipc() is the IPC path itself, bypassing the hook: a
 * merged callee's own nested calls that are not local use it.
 */
#ifndef NIGHTFUSE_ROUTE_HOOK_H_
#define NIGHTFUSE_ROUTE_HOOK_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NIGHTFUSE_ROUTE_PASS 1

typedef int (*nightfuse_route_fn)(const char* func_name, const char* input, size_t input_length,
                                  const char** output, size_t* output_length);

#ifndef __cplusplus
#include <stdatomic.h>
extern _Atomic(nightfuse_route_fn) nightfuse_route_hook;
#endif

int nightfuse_host_invoke_ipc(const char* func_name, const char* input, size_t input_length,
                              const char** output, size_t* output_length);

/* The same, on behalf of the merged function `origin` (the INVOKE frame says so). */
int nightfuse_host_invoke_ipc_from(const char* origin, const char* func_name, const char* input, size_t input_length,
                                   const char** output, size_t* output_length);

#ifdef __cplusplus
}
#endif

#endif /* NIGHTFUSE_ROUTE_HOOK_H_ */
