/* Checks include/nightfuse/ipc.h against proto/golden.txt (the IPC cases and
 * the full_call_id packing; the 16-byte gateway header is TypeScript-only). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nightfuse/ipc.h"
#include "nightfuse/merge_proto.h"

static int failures = 0, passes = 0;

static nf_mp_writer mw;

/* Merge protocol cases: encoded with merge_proto.h into the message buffer. */
static int build_merge(const char* name, nf_message* m) {
  if (strcmp(name, "merge_route_on") == 0) {
    nf_mp_begin(&mw, NF_MP_ROUTE, 7, 0);
    nf_mp_str(&mw, "Bar");
    nf_mp_u8(&mw, 1);
  } else if (strcmp(name, "merge_load_thread") == 0) {
    nf_mp_begin(&mw, NF_MP_LOAD, 9, 0);
    nf_mp_str(&mw, "Bar");
    nf_mp_str(&mw, "/x/libbar.so");
    nf_mp_u8(&mw, NF_ISO_THREAD);
    nf_mp_u8(&mw, 0);
    nf_mp_u16(&mw, 4);
    nf_mp_u32(&mw, 256);
  } else if (strcmp(name, "merge_unload") == 0) {
    nf_mp_begin(&mw, NF_MP_UNLOAD, 11, 0);
    nf_mp_str(&mw, "Bar");
    nf_mp_u32(&mw, 5000);
  } else {
    return 0;
  }
  nf_mp_end(&mw);
  memset(m, 0, sizeof *m);
  memcpy(m->bytes, mw.buf, mw.len);
  return 1;
}

static int build(const char* name, nf_message* m) {
  if (strncmp(name, "merge_", 6) == 0) return build_merge(name, m);
  if (strcmp(name, "ipc_worker_handshake") == 0) {
    nf_msg_init(m, NF_MSG_FUNC_WORKER_HANDSHAKE, nf_full_call_id(2, 0, 5, 0));
  } else if (strcmp(name, "ipc_create_worker") == 0) {
    nf_msg_init(m, NF_MSG_CREATE_FUNC_WORKER, nf_full_call_id(0, 0, 5, 0));
  } else if (strcmp(name, "ipc_launcher_handshake") == 0) {
    nf_msg_init(m, NF_MSG_LAUNCHER_HANDSHAKE, nf_full_call_id(2, 0, 0, 0));
    nf_msg_set_payload_size(m, 64);
  } else if (strcmp(name, "ipc_invoke_nested") == 0) {
    nf_msg_init(m, NF_MSG_INVOKE_FUNC, nf_full_call_id(2, 0, 5, 0));
    nf_put_u64(m, NF_OFF_PARENT_CALL_ID, nf_full_call_id(1, 0, 0, 1));
  } else if (strcmp(name, "full_call_id_packed") == 0) {
    memset(m, 0, sizeof *m);
    nf_put_u64(m, 0, nf_full_call_id(0xAB, 0x15, 0x1234, 0xDEADBEEF));
  } else if (strcmp(name, "full_call_id_simple") == 0) {
    memset(m, 0, sizeof *m);
    nf_put_u64(m, 0, nf_full_call_id(1, 0, 0, 1));
  } else {
    return 0;
  }
  return 1;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "proto/golden.txt";
  FILE* f = fopen(path, "r");
  if (!f) {
    printf("not ok cannot open %s: %s\n0 passed, 1 failed\n", path, strerror(errno));
    return 2;
  }
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#' || line[0] == '\n') continue;
    char name[128], hex[256];
    int off;
    if (sscanf(line, "%127s %d %255s", name, &off, hex) != 3) continue;
    nf_message m;
    if (!build(name, &m)) {
      /* The gateway link's 16-byte header lives in TypeScript only; anything else unknown is a case nobody checks. */
      if (strncmp(name, "gw_", 3) == 0) continue;
      printf("not ok unknown golden case %s (add it to build() here)\n", name);
      failures++;
      continue;
    }
    size_t n = strlen(hex) / 2;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
      unsigned b;
      sscanf(hex + 2 * i, "%2x", &b);
      if (m.bytes[off + (int)i] != b) ok = 0;
    }
    printf("%s %s@%d\n", ok ? "ok" : "not ok", name, off);
    if (ok) passes++; else failures++;
  }
  fclose(f);
  /* Decoding round trip of the packed id. */
  uint64_t id = nf_full_call_id(0xAB, 0x15, 0x1234, 0xDEADBEEF);
  int dec = nf_id_func(id) == 0xAB && nf_id_method(id) == 0x15 && nf_id_client(id) == 0x1234 &&
            nf_id_call(id) == 0xDEADBEEF;
  printf("%s full_call_id decode\n", dec ? "ok" : "not ok");
  if (dec) passes++; else failures++;
  _Static_assert(NF_INLINE_CAPACITY == 960, "inline capacity");
  printf("%d passed, %d failed\n", passes, failures);
  return failures || passes < 10 ? 1 : 0;
}
