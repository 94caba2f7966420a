/*
 * The call path: the host's invoke_func_fn -> nightfuse_route_hook ->
 * nf_merge_route(): finds the routed callee by name, pins its slot, takes a
 * free instance, runs the callee's faas_func_call under its isolation level
 * with a fault frame armed, and hands its output over (malloc'd; the host
 * frees it when the caller's call returns, the IPC path's lifetime).
 */
#include "runtime.h"

#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>

/* Thread hand-off: spin briefly, then park on a futex. A futex wake costs
 * ~5-10 µs here, a spinning hand-off ~0.2 µs, but spinning threads steal the
 * CPU other workers need (2 cores, many workers): the caller spins a little
 * longer (a merged call is usually short), the callee only just after a call
 * (back-to-back calls). */
#define CALLER_SPIN_CYCLES 15000 /* ~5 µs */
#define CALLEE_SPIN_CYCLES 6000  /* ~2 µs */

callee g_callees[MAX_CALLEES];
_Atomic(nightfuse_route_fn)* g_hook;
void (*g_test_pause)(int where);

/* ------------------------------------------------------------- output */

void nf_merge_append(void* ctx, const char* data, size_t len) {
  instance* in = ctx;
  if (len == 0 || in->out_failed) return;
  size_t need;
  if (__builtin_add_overflow(in->out_len, len, &need)) {
    in->out_failed = true;
    return;
  }
  if (need > in->out_cap) {
    size_t cap = in->out_cap ? in->out_cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    fault_frame* armed = tls_frame;
    tls_frame = NULL; /* a fault inside realloc is not the callee's: it may hold malloc's lock */
    char* p = realloc(in->out, cap);
    tls_frame = armed;
    if (!p) {
      in->out_failed = true; /* the call fails; its output is never short */
      return;
    }
    in->out = p;
    in->out_cap = cap;
  }
  memcpy(in->out + in->out_len, data, len); /* the callee's bytes: still under its frame */
  in->out_len = need;
}

void nf_release_deferred(instance* in) {
  for (size_t i = 0; i < in->n_defer; i++) free(in->defer[i]);
  in->n_defer = 0;
}

/* Nested calls made by a merged callee: local when that callee is merged
 * too, else out over the host's IPC. Our code and the host's run here, so
 * the callee's fault frame is disarmed until we return into it. */
int nf_merge_invoke(void* ctx, const char* name, const char* input, size_t len, const char** out, size_t* out_len) {
  instance* in = ctx;
  fault_frame* armed = tls_frame;
  tls_frame = NULL;
  *out = NULL;
  *out_len = 0;
  const char* o = NULL;
  size_t ol = 0;
  int rc = nf_merge_route(name, input, len, &o, &ol);
  if (rc == NIGHTFUSE_ROUTE_PASS) {
    /* Out over IPC, saying it comes from this callee: the launcher's call graph keeps callee -> name. */
    if (g_host_ipc_from) rc = g_host_ipc_from(in->owner->name_plain, name, input, len, out, out_len);
    else rc = g_host_ipc ? g_host_ipc(name, input, len, out, out_len) : -1;
  } else if (rc != 0) {
    rc = -1;
  } else {
    if (o && in->n_defer == in->cap_defer) {
      size_t cap = in->cap_defer ? in->cap_defer * 2 : 4;
      void** d = realloc(in->defer, cap * sizeof *d);
      if (!d) {
        free((void*)o);
        tls_frame = armed;
        return -1;
      }
      in->defer = d;
      in->cap_defer = cap;
    }
    if (o) in->defer[in->n_defer++] = (void*)o;
    *out = o;
    *out_len = ol;
  }
  tls_frame = armed;
  return rc;
}

/* The callee call itself, on whatever stack/thread the isolation chose. */
static int invoke_callee(instance* in, const char* method, const char* input, size_t len) {
  callee* c = in->owner;
  in->out_len = 0;
  in->out_failed = false;
  return method && c->call_grpc ? c->call_grpc(in->handle, method, input, len) : c->call(in->handle, input, len);
}

/* stack isolation: int nf_call_on_stack(void* top, int (*fn)(void*), void* arg) */
__asm__(
    ".text\n"
    ".p2align 4\n"
    "nf_call_on_stack:\n"
    "  push %rbp\n"
    "  mov %rsp, %rbp\n"
    "  mov %rdi, %rsp\n"
    "  mov %rdx, %rdi\n"
    "  call *%rsi\n"
    "  mov %rbp, %rsp\n"
    "  pop %rbp\n"
    "  ret\n");
int nf_call_on_stack(void* top, int (*fn)(void*), void* arg) __attribute__((visibility("hidden")));

typedef struct {
  instance* in;
  const char* method;
  const char* input;
  size_t len;
} call_args;

static int call_trampoline(void* p) {
  call_args* a = p;
  return invoke_callee(a->in, a->method, a->input, a->len);
}

/* ------------------------------------------------ thread isolation */

static bool wait_for(_Atomic uint32_t* state, _Atomic int* parked, uint64_t spin, bool (*done)(uint32_t), uint32_t* seen) {
  uint64_t t0 = __rdtsc();
  for (;;) {
    uint32_t s = atomic_load(state);
    if (done(s)) {
      *seen = s;
      return true;
    }
    if (__rdtsc() - t0 < spin) {
      _mm_pause();
      continue;
    }
    /* Dekker with the other side's "store state; load parked": both seq_cst,
     * so one of us sees the other (no lost wake-up). */
    atomic_store(parked, 1);
    s = atomic_load(state);
    if (!done(s)) nf_futex(state, FUTEX_WAIT, s, NULL);
    atomic_store(parked, 0);
    t0 = __rdtsc();
  }
}

static bool request_or_exit(uint32_t s) { return s == 1 || s == 3; }
static bool answered(uint32_t s) { return s == 2; }

static void signal_state(instance* in, uint32_t s, _Atomic int* other_parked) {
  atomic_store(&in->state, s);
  if (atomic_load(other_parked)) nf_futex(&in->state, FUTEX_WAKE, 1, NULL);
}

void* nf_callee_thread(void* p) {
  instance* in = p;
  nf_ensure_altstack();
  fault_frame f;
  for (;;) {
    uint32_t s;
    wait_for(&in->state, &in->callee_parked, CALLEE_SPIN_CYCLES, request_or_exit, &s);
    if (s == 3) break;
    volatile bool faulted = false;
    if (sigsetjmp(f.env, 0) == 0) {
      tls_frame = &f;
      int rc = invoke_callee(in, in->req_method, in->req_in, in->req_len);
      tls_frame = NULL;
      nf_release_deferred(in);
      in->req_rc = rc;
    } else {
      nf_after_fault_jump();
      in->thread_fault.signo = f.signo;
      in->thread_fault.addr = f.addr;
      in->thread_fault.pc = f.pc;
      in->thread_faulted = true;
      in->req_rc = -1;
      faulted = true;
    }
    signal_state(in, 2, &in->caller_parked);
    if (faulted) break; /* a faulted callee thread is not reused; UNLOAD joins it */
  }
  nf_release_altstack();
  return NULL;
}

static int run_on_thread(instance* in, const char* method, const char* input, size_t len, fault_frame* out_fault) {
  in->req_in = input;
  in->req_len = len;
  in->req_method = method;
  signal_state(in, 1, &in->callee_parked);
  uint32_t s;
  wait_for(&in->state, &in->caller_parked, CALLER_SPIN_CYCLES, answered, &s);
  if (in->thread_faulted) {
    *out_fault = in->thread_fault;
    return -2; /* its thread is exiting (and may never finish, if it faulted holding a lock): no join here */
  }
  atomic_store(&in->state, 0);
  return in->req_rc;
}

/* ---------------------------------------------------------- the hook */

/* A routed slot of this name (or "name/method" for a gRPC callee), and the
 * generation its name was read under. */
static callee* find_routed(const char* name, const char** method, uint32_t* gen) {
  for (int i = 0; i < MAX_CALLEES; i++) {
    callee* c = &g_callees[i];
    if (!atomic_load_explicit(&c->routed, memory_order_acquire)) continue;
    uint32_t g = atomic_load_explicit(&c->gen, memory_order_acquire);
    if (g & 1) continue;
    size_t k = 0;
    unsigned char ch;
    while (k < NF_MP_MAX_NAME && (ch = atomic_load_explicit(&c->name[k], memory_order_relaxed)) != 0 && ch == (unsigned char)name[k]) k++;
    if (k == NF_MP_MAX_NAME) ch = 0;
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&c->gen, memory_order_relaxed) != g) continue; /* rewritten while we read */
    if (ch != 0) continue;
    if (name[k] == '\0') *method = NULL;
    else if (name[k] == '/') *method = name + k + 1;
    else continue;
    *gen = g;
    return c;
  }
  return NULL;
}

static instance* acquire(callee* c) {
  for (int i = 0; i < c->n_instances; i++) {
    instance* in = &c->inst[i];
    if (atomic_load(&in->broken)) continue;
    int zero = 0;
    if (atomic_compare_exchange_strong_explicit(&in->busy, &zero, 1, memory_order_acquire, memory_order_relaxed)) return in;
  }
  return NULL;
}

/* Runs the callee on this thread (inline, or on its own stack) with a fault
 * frame armed; -2 when it faulted. Separate and not inlined so the caller's
 * locals never live across the _setjmp. */
__attribute__((noinline)) static int run_guarded(instance* in, const char* method, const char* input, size_t len,
                                                 fault_frame* f) {
  fault_frame* volatile saved = tls_frame; /* a merged callee calling another merged callee */
  if (sigsetjmp(f->env, 0) != 0) {
    tls_frame = saved;
    nf_after_fault_jump();
    return -2;
  }
  tls_frame = f;
  int rc;
  if (in->owner->isolation == NF_ISO_STACK) {
    call_args a = {in, method, input, len};
    rc = nf_call_on_stack((char*)in->stack_base + in->stack_size, call_trampoline, &a);
  } else {
    rc = invoke_callee(in, method, input, len);
  }
  tls_frame = saved;
  return rc;
}

static void count(callee* c, uint64_t cycles, bool failed) {
  atomic_fetch_add_explicit(&c->calls, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&c->total_cycles, cycles, memory_order_relaxed);
  if (cycles > atomic_load_explicit(&c->max_cycles, memory_order_relaxed))
    atomic_store_explicit(&c->max_cycles, cycles, memory_order_relaxed);
  int b = cycles ? 63 - __builtin_clzll(cycles) : 0;
  atomic_fetch_add_explicit(&c->hist[b < NF_MP_HIST ? b : NF_MP_HIST - 1], 1, memory_order_relaxed);
  if (failed) atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
}

int nf_merge_route(const char* name, const char* input, size_t len, const char** out, size_t* out_len) {
  const char* method;
  uint32_t gen;
  callee* c = find_routed(name, &method, &gen);
  if (!c) return NIGHTFUSE_ROUTE_PASS;
  if (__builtin_expect(g_test_pause != NULL, 0)) g_test_pause(1); /* tests: between lookup and pinning */
  /* Pin: with UNLOAD's "routed = 0; wait for inflight == 0" this is Dekker
   * (seq_cst both sides): either UNLOAD waits for us, or we see it and back off. */
  atomic_fetch_add(&c->inflight, 1);
  if (!atomic_load(&c->routed) || atomic_load(&c->gen) != gen || (method && !c->call_grpc)) {
    atomic_fetch_sub(&c->inflight, 1);
    return NIGHTFUSE_ROUTE_PASS;
  }
  instance* in = acquire(c);
  if (!in) { /* all instances busy (recursion, concurrency): over IPC */
    atomic_fetch_sub(&c->inflight, 1);
    return NIGHTFUSE_ROUTE_PASS;
  }
  uint64_t t0 = __rdtsc();
  fault_frame f;
  f.signo = 0;
  int rc;
  if (c->isolation == NF_ISO_THREAD) {
    rc = run_on_thread(in, method, input, len, &f);
  } else {
    nf_ensure_altstack();
    rc = run_guarded(in, method, input, len, &f);
    if (rc != -2) nf_release_deferred(in);
  }
  if (rc == 0 && in->out_failed) rc = -1;
  count(c, __rdtsc() - t0, rc != 0);
  int result;
  if (rc == -2) {
    /* Nothing is freed here: a lock the callee held (malloc's) may still be
     * held. UNLOAD frees what the instance had. */
    nf_note_fault(c, in, &f);
    result = -1;
  } else if (rc != 0) {
    result = -1;
  } else {
    /* Hand the buffer over: the host frees it when the caller's call returns. */
    *out = in->out_len ? in->out : NULL;
    *out_len = in->out_len;
    if (in->out_len) {
      in->out = NULL;
      in->out_cap = 0;
    }
    in->out_len = 0;
    result = 0;
  }
  if (rc != -2) atomic_store_explicit(&in->busy, 0, memory_order_release);
  atomic_fetch_sub(&c->inflight, 1);
  return result;
}

void nf_update_hook(void) {
  bool any = false;
  for (int i = 0; i < MAX_CALLEES; i++) any |= atomic_load(&g_callees[i].routed) != 0;
  atomic_store_explicit(g_hook, any ? nf_merge_route : NULL, memory_order_release);
}
