/*
 * Nightcore's worker IPC frame and call ids: the single C definition.
 * The TypeScript twin is proto/wire.ts; both are checked against the same
 * golden bytes in proto/golden.txt (test/wire.test.ts, native/test/test_ipc.c).
 *
 * Little-endian x86-64 only, as Nightcore. Bytes 0-7 of every frame are the LE
 * u64 `type | full_call_id << 4`; we encode with shifts instead of Nightcore's
 * straddling bitfields so the layout does not depend on compiler bitfield rules.
 */
#ifndef NIGHTFUSE_IPC_H_
#define NIGHTFUSE_IPC_H_

#include <stdint.h>
#include <string.h>

#define NF_MESSAGE_SIZE 1024
#define NF_HEADER_SIZE 64
#define NF_INLINE_CAPACITY (NF_MESSAGE_SIZE - NF_HEADER_SIZE) /* 960 */
#define NF_CONTAINER_ID_LEN 64

enum nf_msg_type {
  NF_MSG_INVALID = 0,
  NF_MSG_ENGINE_HANDSHAKE = 1,
  NF_MSG_LAUNCHER_HANDSHAKE = 2,
  NF_MSG_FUNC_WORKER_HANDSHAKE = 3,
  NF_MSG_HANDSHAKE_RESPONSE = 4,
  NF_MSG_CREATE_FUNC_WORKER = 5,
  NF_MSG_INVOKE_FUNC = 6,
  NF_MSG_DISPATCH_FUNC_CALL = 7,
  NF_MSG_FUNC_CALL_COMPLETE = 8,
  NF_MSG_FUNC_CALL_FAILED = 9,
};

/* HANDSHAKE_RESPONSE flags */
#define NF_FLAG_USE_ENGINE_SOCKET 0x1u
#define NF_FLAG_USE_FIFO_FOR_NESTED_CALL 0x2u

typedef struct {
  uint8_t bytes[NF_MESSAGE_SIZE];
} nf_message;

/* Field offsets inside the 1024-byte frame. */
#define NF_OFF_HEADER 0          /* u64: type | full_call_id << 4 */
#define NF_OFF_PARENT_CALL_ID 8  /* u64, INVOKE_FUNC */
#define NF_OFF_DISPATCH_DELAY 8  /* i32, COMPLETE/FAILED */
#define NF_OFF_PROCESSING_TIME 12 /* i32, COMPLETE/FAILED */
#define NF_OFF_SEND_TIMESTAMP 16 /* i64 µs CLOCK_MONOTONIC */
#define NF_OFF_PAYLOAD_SIZE 24   /* i32; < 0 => -size bytes in a shm file */
#define NF_OFF_FLAGS 28          /* u32 */
/* Nightfuse extension in Nightcore's zero padding (Nightcore ignores it):
 * INVOKE_FUNC sent on behalf of a merged callee carries the function it came
 * from, so the launcher records the edge callee->next, not caller->next. */
#define NF_OFF_ORIGIN_FLAG 32    /* u8: 1 when NF_OFF_ORIGIN_FUNC is set */
#define NF_OFF_ORIGIN_FUNC 33    /* u8: func_id of the originating function */
#define NF_OFF_INLINE 64

static inline uint64_t nf_full_call_id(uint32_t func_id, uint32_t method_id, uint32_t client_id,
                                       uint32_t call_id) {
  return (uint64_t)(func_id & 0xFF) | ((uint64_t)(method_id & 0x3F) << 8) |
         ((uint64_t)(client_id & 0x3FFF) << 14) | ((uint64_t)call_id << 28);
}
static inline uint32_t nf_id_func(uint64_t full) { return (uint32_t)(full & 0xFF); }
static inline uint32_t nf_id_method(uint64_t full) { return (uint32_t)((full >> 8) & 0x3F); }
static inline uint32_t nf_id_client(uint64_t full) { return (uint32_t)((full >> 14) & 0x3FFF); }
static inline uint32_t nf_id_call(uint64_t full) { return (uint32_t)((full >> 28) & 0xFFFFFFFFu); }

static inline void nf_put_u64(nf_message* m, int off, uint64_t v) { memcpy(m->bytes + off, &v, 8); }
static inline void nf_put_u32(nf_message* m, int off, uint32_t v) { memcpy(m->bytes + off, &v, 4); }
static inline uint64_t nf_get_u64(const nf_message* m, int off) {
  uint64_t v;
  memcpy(&v, m->bytes + off, 8);
  return v;
}
static inline uint32_t nf_get_u32(const nf_message* m, int off) {
  uint32_t v;
  memcpy(&v, m->bytes + off, 4);
  return v;
}

static inline void nf_msg_init(nf_message* m, enum nf_msg_type type, uint64_t full_call_id) {
  memset(m, 0, sizeof(*m));
  nf_put_u64(m, NF_OFF_HEADER, (uint64_t)type | (full_call_id << 4));
}
static inline enum nf_msg_type nf_msg_type_of(const nf_message* m) {
  return (enum nf_msg_type)(nf_get_u64(m, NF_OFF_HEADER) & 0xF);
}
static inline uint64_t nf_msg_full_call_id(const nf_message* m) {
  return nf_get_u64(m, NF_OFF_HEADER) >> 4;
}
static inline int32_t nf_msg_payload_size(const nf_message* m) {
  return (int32_t)nf_get_u32(m, NF_OFF_PAYLOAD_SIZE);
}
static inline void nf_msg_set_payload_size(nf_message* m, int32_t v) {
  nf_put_u32(m, NF_OFF_PAYLOAD_SIZE, (uint32_t)v);
}

#endif /* NIGHTFUSE_IPC_H_ */
