/*
 * Internals of libnightfuse_merge.so, shared by its modules:
 *
 *   faults.c   fault containment: handlers, fault frames, alternate stacks,
 *              the FAULT hand-off to the launcher
 *   route.c    the call path: the routing hook, slot pinning, isolation
 *              levels, the callee-thread hand-off, output buffers
 *   control.c  the control thread: LOAD / ROUTE / UNLOAD / STATS, FAULT events
 *   start.c    how the runtime starts: constructor, SIGURG, entry
 *
 * Memory ordering: the hot path's hand-offs are Dekker-style (each side
 * stores its flag, then loads the other's), so both sides use seq_cst stores
 * and loads; publication of a loaded callee is release/acquire.
 */
#ifndef NIGHTFUSE_MERGE_RUNTIME_H_
#define NIGHTFUSE_MERGE_RUNTIME_H_
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "faas/worker_v1_interface.h"
#include "nightfuse/merge_proto.h"
#include "nightfuse/route_hook.h"

#define NF_EXPORT __attribute__((visibility("default")))
#define NF_LOCAL __attribute__((visibility("hidden")))
#define MAX_CALLEES 16
#define MAX_INSTANCES 16
#define VERSION "nightfuse-merge/2"

typedef int (*init_fn)(void);
typedef int (*create_fn)(void*, faas_invoke_func_fn_t, faas_append_output_fn_t, void**);
typedef int (*call_fn)(void*, const char*, size_t);
typedef int (*grpc_call_fn)(void*, const char*, const char*, size_t);
typedef int (*destroy_fn)(void*);

struct callee;

/* Where a faulting callee jumps back to. */
typedef struct {
  sigjmp_buf env; /* sigsetjmp(env, 0): no mask save (cheap); sanitizers follow siglongjmp out of a handler */
  volatile int signo;
  volatile uintptr_t addr, pc;
} fault_frame;

typedef struct instance {
  struct callee* owner;
  void* handle;            /* the callee's worker handle */
  _Atomic int busy;
  _Atomic bool broken;     /* faulted: never used again */
  /* output of the running call */
  char* out;
  size_t out_len, out_cap;
  bool out_failed;         /* a grow failed: the call fails */
  /* buffers of this callee's own nested local calls, freed when its call returns */
  void** defer;
  size_t n_defer, cap_defer;
  /* stack isolation */
  void* stack_base;
  size_t stack_size;
  /* thread isolation: the hand-off slot */
  pthread_t thread;
  bool has_thread;
  _Atomic uint32_t state;  /* 0 idle, 1 request, 2 done, 3 exit */
  _Atomic int callee_parked, caller_parked;
  const char* req_in;
  size_t req_len;
  const char* req_method;
  int req_rc;
  fault_frame thread_fault; /* set by a callee thread whose call faulted (it then exits) */
  bool thread_faulted;
} instance;

/*
 * A callee slot. `gen` is a sequence count: odd while the control thread
 * (re)builds the slot, bumped again when it is published, and again when it
 * is torn down. The call path reads the name under it (seqlock) and pins the
 * generation it saw: a slot unloaded and reloaded with another callee in
 * between can never serve a call meant for the first.
 */
typedef struct callee {
  _Atomic uint32_t gen;
  _Atomic unsigned char name[NF_MP_MAX_NAME + 1];
  _Atomic int loaded;
  _Atomic int routed;
  _Atomic int inflight;
  _Atomic int faulted;     /* 0, 1 fault not yet reported, 2 reported */
  /* written by the control thread before publication, read after pinning */
  char name_plain[NF_MP_MAX_NAME + 1];
  char library[NF_MP_MAX_PATH + 1];
  int isolation;
  int n_instances;
  instance inst[MAX_INSTANCES];
  void* lib;
  call_fn call;
  grpc_call_fn call_grpc;
  destroy_fn destroy;
  uintptr_t text_lo, text_hi; /* the callee's executable mappings: was a fault in its own code? */
  /* stats */
  _Atomic uint64_t calls, failures, faults, total_cycles, max_cycles;
  _Atomic uint32_t hist[NF_MP_HIST];
  /* last fault, for the event (written before faulted = 1, release) */
  int fault_signo;
  uintptr_t fault_addr;
  bool fault_in_callee;
  uint32_t fault_id;
} callee;

extern callee g_callees[MAX_CALLEES] NF_LOCAL;
extern _Atomic(nightfuse_route_fn)* g_hook NF_LOCAL;
extern int (*g_host_ipc)(const char*, const char*, size_t, const char**, size_t*) NF_LOCAL;
extern int (*g_host_ipc_from)(const char*, const char*, const char*, size_t, const char**, size_t*) NF_LOCAL;
extern void (*g_test_pause)(int where) NF_LOCAL;
extern _Atomic int g_running NF_LOCAL;
extern int g_sock NF_LOCAL;
extern int g_event_fd NF_LOCAL;
extern _Atomic uint32_t g_fault_acked NF_LOCAL;
extern __thread fault_frame* tls_frame __attribute__((tls_model("initial-exec"))) NF_LOCAL;

/* faults.c */
void nf_install_handlers(void) NF_LOCAL;
void nf_ensure_altstack_slow(void) NF_LOCAL;
extern __thread bool tls_altstack_done __attribute__((tls_model("initial-exec"))) NF_LOCAL;
/* An alternate signal stack for this thread (the check is on every merged call: inline). */
static inline void nf_ensure_altstack(void) {
  if (__builtin_expect(!tls_altstack_done, 0)) nf_ensure_altstack_slow();
}
void nf_release_altstack(void) NF_LOCAL;
void nf_unblock_fault_signals(void) NF_LOCAL;
void nf_after_fault_jump(void) NF_LOCAL;
void nf_note_fault(callee* c, instance* in, const fault_frame* f) NF_LOCAL;
void nf_fault_acked(uint32_t id) NF_LOCAL;
long nf_futex(_Atomic uint32_t* addr, int op, uint32_t val, const struct timespec* timeout) NF_LOCAL;

/* route.c */
int nf_merge_route(const char* name, const char* input, size_t len, const char** out, size_t* out_len) NF_LOCAL;
int nf_merge_invoke(void* ctx, const char* name, const char* input, size_t len, const char** out, size_t* out_len) NF_LOCAL;
void nf_merge_append(void* ctx, const char* data, size_t len) NF_LOCAL;
void* nf_callee_thread(void* p) NF_LOCAL;
void nf_update_hook(void) NF_LOCAL;
void nf_release_deferred(instance* in) NF_LOCAL;

/* control.c */
void* nf_control_thread(void* arg) NF_LOCAL;
void nf_routes_off(void) NF_LOCAL;

#endif /* NIGHTFUSE_MERGE_RUNTIME_H_ */
