/*
 * A small social-network compose-post flow, after DeathStarBench's
 * socialNetwork, as six worker_v1 functions built from this one file
 * (-DSVC_<NAME>):
 *
 *   ComposePost -> UniqueId                      post id
 *               -> Text -> UrlShorten -> UniqueId   short links (chain of depth 4)
 *                       -> UserMention           @mentions   (fan-out)
 *               -> PostStorage                   "stores" the post (trust group: storage)
 *
 * Everything is deterministic (ids are hashes of their input), so the output
 * of a request is the same merged or not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faas/worker_v1_interface.h"

struct ctx {
  void* caller_context;
  faas_invoke_func_fn_t invoke;
  faas_append_output_fn_t append;
};

int faas_init(void) { return 0; }

int faas_create_func_worker(void* caller_context, faas_invoke_func_fn_t invoke_func_fn,
                            faas_append_output_fn_t append_output_fn, void** worker_handle) {
  struct ctx* c = malloc(sizeof *c);
  if (!c) return -1;
  c->caller_context = caller_context;
  c->invoke = invoke_func_fn;
  c->append = append_output_fn;
  *worker_handle = c;
  return 0;
}

int faas_destroy_func_worker(void* worker_handle) {
  free(worker_handle);
  return 0;
}

static void out(struct ctx* c, const char* s, size_t n) { c->append(c->caller_context, s, n); }
__attribute__((unused)) static void outs(struct ctx* c, const char* s) { out(c, s, strlen(s)); }

/* A nested call; on success o and ol hold the callee's output (valid until we return). */
__attribute__((unused)) static int call(struct ctx* c, const char* fn, const char* in, size_t n, const char** o, size_t* ol) {
  return c->invoke(c->caller_context, fn, in, n, o, ol);
}

#if defined(SVC_UNIQUEID)
/* "<kind>:<text>" -> 16 hex digits of FNV-1a */
int faas_func_call(void* h, const char* in, size_t n) {
  uint64_t x = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) x = (x ^ (uint8_t)in[i]) * 1099511628211ull;
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", (unsigned long long)x);
  out(h, buf, 16);
  return 0;
}

#elif defined(SVC_USERMENTION)
/* the @names in the text, comma-separated */
int faas_func_call(void* h, const char* in, size_t n) {
  int first = 1;
  for (size_t i = 0; i < n; i++) {
    if (in[i] != '@' || (i > 0 && in[i - 1] != ' ')) continue;
    size_t j = i + 1;
    while (j < n && in[j] != ' ') j++;
    if (j > i + 1) {
      if (!first) outs(h, ",");
      out(h, in + i + 1, j - i - 1);
      first = 0;
    }
    i = j;
  }
  return 0;
}

#elif defined(SVC_URLSHORTEN)
/* replaces every http(s):// word by https://nf.io/<UniqueId("url:"+word)> */
int faas_func_call(void* h, const char* in, size_t n) {
  struct ctx* c = h;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && in[j] != ' ') j++;
    size_t w = j - i;
    if ((w > 7 && memcmp(in + i, "http://", 7) == 0) || (w > 8 && memcmp(in + i, "https://", 8) == 0)) {
      char key[600];
      if (w > sizeof key - 5) return 1;
      memcpy(key, "url:", 4);
      memcpy(key + 4, in + i, w);
      const char* id;
      size_t idl;
      if (call(c, "UniqueId", key, w + 4, &id, &idl) != 0) return 1;
      outs(c, "https://nf.io/");
      out(c, id, idl < 8 ? idl : 8);
    } else {
      out(c, in + i, w);
    }
    if (j < n) outs(c, " ");
    i = j + 1;
  }
  return 0;
}

#elif defined(SVC_TEXT)
/* "<shortened text>|mentions=<a,b>" */
int faas_func_call(void* h, const char* in, size_t n) {
  struct ctx* c = h;
  const char *s, *m;
  size_t sl, ml;
  if (call(c, "UrlShorten", in, n, &s, &sl) != 0) return 1;
  if (call(c, "UserMention", in, n, &m, &ml) != 0) return 1;
  out(c, s, sl);
  outs(c, "|mentions=");
  out(c, m, ml);
  return 0;
}

#elif defined(SVC_POSTSTORAGE)
/* pretends to store: "stored:<bytes>:<first 8 hex of a checksum>" */
int faas_func_call(void* h, const char* in, size_t n) {
  uint32_t x = 2166136261u;
  for (size_t i = 0; i < n; i++) x = (x ^ (uint8_t)in[i]) * 16777619u;
  char buf[64];
  int k = snprintf(buf, sizeof buf, "stored:%zu:%08x", n, x);
  out(h, buf, (size_t)k);
  return 0;
}

#elif defined(SVC_COMPOSEPOST)
/* input: the post text; output: {"post_id":...,"text":...,"storage":...} */
int faas_func_call(void* h, const char* in, size_t n) {
  struct ctx* c = h;
  const char *id, *t, *st;
  size_t idl, tl, stl;
  char key[1100];
  if (n > sizeof key - 6) return 1;
  memcpy(key, "post:", 5);
  memcpy(key + 5, in, n);
  if (call(c, "UniqueId", key, n + 5, &id, &idl) != 0) return 1;
  if (call(c, "Text", in, n, &t, &tl) != 0) return 1;
  /* the record to store: id + processed text */
  size_t rl = idl + 1 + tl;
  char* rec = malloc(rl);
  if (!rec) return 1;
  memcpy(rec, id, idl);
  rec[idl] = '|';
  memcpy(rec + idl + 1, t, tl);
  int rc = call(c, "PostStorage", rec, rl, &st, &stl);
  free(rec);
  if (rc != 0) return 1;
  outs(c, "{\"post_id\":\"");
  out(c, id, idl);
  outs(c, "\",\"text\":\"");
  out(c, t, tl);
  outs(c, "\",\"storage\":\"");
  out(c, st, stl);
  outs(c, "\"}");
  return 0;
}

#else
#error "build with -DSVC_<NAME>"
#endif
