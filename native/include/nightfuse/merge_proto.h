/*
 * The merge control protocol between the launcher and the merge runtime
 * injected into a caller worker: the one C definition. The TypeScript twin is
 * proto/merge-wire.ts; both are checked against proto/golden.txt (merge_* cases).
 *
 * A stream of frames over a unix stream socket (the runtime connects to the path
 * it was given as its entry argument). All integers little-endian.
 *
 *   frame   := u32 length (whole frame, header included, <= NF_MP_MAX_FRAME)
 *              u16 type
 *              u16 reserved (0)
 *              u32 request id (replies echo it; 0 in HELLO)
 *              i32 status (replies: 0 ok, < 0 error with a message; else 0)
 *              body
 *   str     := u16 length + bytes (no NUL); a callee name is at most
 *              NF_MP_MAX_NAME bytes, a library path at most NF_MP_MAX_PATH:
 *              longer ones are refused, never truncated
 *
 * runtime -> launcher
 *   HELLO   body: u32 pid, u32 func_id, u32 client_id, str version
 *   FAULT   request id: the fault's number (from 1); body: str callee, i32 signal,
 *           u64 fault address, u64 calls before, u8 flags (bit 0: the faulting
 *           instruction was in the callee's own code). The worker is from now on
 *           possibly damaged. The faulting call returns only once the launcher
 *           acknowledges (a FAULT reply with that id, empty body) or after 1 s,
 *           so the launcher takes the worker out of dispatch before its
 *           current call even finishes.
 *   reply   type = request type | NF_MP_REPLY; body: str message, then per type:
 *           STATS: u64 tsc_hz, u16 n, n x callee_stats
 * launcher -> runtime
 *   LOAD    body: str callee, str library, u8 isolation, u8 reserved, u16 instances, u32 stack_kib
 *   ROUTE   body: str callee, u8 on
 *   UNLOAD  body: str callee, u32 timeout_ms
 *   STATS   body: empty
 *   FAULT reply (the acknowledgement): body empty
 *
 *   callee_stats := str name, u8 isolation, u8 routed, u8 faulted, u8 reserved,
 *                   u64 calls, u64 failures, u64 faults, u64 total_cycles,
 *                   u64 max_cycles, u32 inflight, u32 instances,
 *                   u32 hist[NF_MP_HIST] (bucket i: calls of < 2^(i+1) cycles)
 */
#ifndef NIGHTFUSE_MERGE_PROTO_H_
#define NIGHTFUSE_MERGE_PROTO_H_

#include <stdint.h>
#include <string.h>

#define NF_MP_HEADER 16
#define NF_MP_MAX_FRAME 65536
#define NF_MP_HIST 32
#define NF_MP_REPLY 0x8000
#define NF_MP_MAX_NAME 255
#define NF_MP_MAX_PATH 4095
#define NF_MP_FAULT_IN_CALLEE 1

enum nf_mp_type {
  NF_MP_HELLO = 1,
  NF_MP_LOAD = 2,
  NF_MP_ROUTE = 3,
  NF_MP_UNLOAD = 4,
  NF_MP_STATS = 5,
  NF_MP_FAULT = 6,
};

enum nf_isolation { NF_ISO_INLINE = 0, NF_ISO_STACK = 1, NF_ISO_THREAD = 2 };

/* A growable frame being written. */
typedef struct {
  uint8_t buf[NF_MP_MAX_FRAME];
  uint32_t len;
  int overflow;
} nf_mp_writer;

static inline void nf_mp_put(nf_mp_writer* w, const void* p, uint32_t n) {
  if (w->len + n > NF_MP_MAX_FRAME) {
    w->overflow = 1;
    return;
  }
  memcpy(w->buf + w->len, p, n);
  w->len += n;
}
static inline void nf_mp_u8(nf_mp_writer* w, uint8_t v) { nf_mp_put(w, &v, 1); }
static inline void nf_mp_u16(nf_mp_writer* w, uint16_t v) { nf_mp_put(w, &v, 2); }
static inline void nf_mp_u32(nf_mp_writer* w, uint32_t v) { nf_mp_put(w, &v, 4); }
static inline void nf_mp_u64(nf_mp_writer* w, uint64_t v) { nf_mp_put(w, &v, 8); }
static inline void nf_mp_str(nf_mp_writer* w, const char* s) {
  size_t n = s ? strlen(s) : 0;
  if (n > 0xFFFF) { /* never truncated: the frame is refused */
    w->overflow = 1;
    return;
  }
  nf_mp_u16(w, (uint16_t)n);
  nf_mp_put(w, s, (uint32_t)n);
}
static inline void nf_mp_begin(nf_mp_writer* w, uint16_t type, uint32_t request_id, int32_t status) {
  w->len = 0;
  w->overflow = 0;
  nf_mp_u32(w, 0); /* patched by nf_mp_end */
  nf_mp_u16(w, type);
  nf_mp_u16(w, 0);
  nf_mp_u32(w, request_id);
  nf_mp_u32(w, (uint32_t)status);
}
static inline void nf_mp_end(nf_mp_writer* w) { memcpy(w->buf, &w->len, 4); }

/* A received frame being read; reads past the end set `bad` and yield zeros;
 * a string longer than its buffer sets `too_long` (its length in too_long_len). */
typedef struct {
  const uint8_t* p;
  uint32_t len;
  uint32_t off;
  int bad;
  int too_long;
  uint32_t too_long_len;
} nf_mp_reader;

static inline void nf_mp_get(nf_mp_reader* r, void* out, uint32_t n) {
  if (r->off + n > r->len) {
    r->bad = 1;
    memset(out, 0, n);
    return;
  }
  memcpy(out, r->p + r->off, n);
  r->off += n;
}
static inline uint8_t nf_mp_get_u8(nf_mp_reader* r) { uint8_t v; nf_mp_get(r, &v, 1); return v; }
static inline uint16_t nf_mp_get_u16(nf_mp_reader* r) { uint16_t v; nf_mp_get(r, &v, 2); return v; }
static inline uint32_t nf_mp_get_u32(nf_mp_reader* r) { uint32_t v; nf_mp_get(r, &v, 4); return v; }
static inline uint64_t nf_mp_get_u64(nf_mp_reader* r) { uint64_t v; nf_mp_get(r, &v, 8); return v; }
/* Copies a str into out (NUL-terminated). One that does not fit in outlen-1
 * bytes, or holds a NUL, is refused (too_long / bad), never truncated. */
static inline void nf_mp_get_str(nf_mp_reader* r, char* out, uint32_t outlen) {
  uint16_t n = nf_mp_get_u16(r);
  out[0] = '\0';
  if (r->off + n > r->len) {
    r->bad = 1;
    return;
  }
  if (n > outlen - 1) {
    if (!r->too_long) r->too_long_len = n;
    r->too_long = 1;
  } else if (memchr(r->p + r->off, 0, n)) {
    r->bad = 1;
  } else {
    memcpy(out, r->p + r->off, n);
    out[n] = '\0';
  }
  r->off += n;
}

#endif /* NIGHTFUSE_MERGE_PROTO_H_ */
