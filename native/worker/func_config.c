/*
 * A small strict JSON reader for func_config.json. The worker host only needs
 * funcName, funcId and grpcMethods; other keys are skipped (Nightcore ignores
 * unknown keys, and Nightfuse adds its own). Full validation is the
 * launcher's job (common/func-config.ts); here we only refuse what we cannot read.
 */
#include "func_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char* p;
  const char* end;
  char* err;
  size_t errlen;
} cursor;

static int fail(cursor* c, const char* what) {
  if (c->err && c->err[0] == '\0') snprintf(c->err, c->errlen, "func_config: %s", what);
  return -1;
}

static void skip_ws(cursor* c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static int expect(cursor* c, char ch) {
  skip_ws(c);
  if (c->p >= c->end || *c->p != ch) {
    char msg[64];
    snprintf(msg, sizeof msg, "expected '%c' at offset %ld", ch, (long)(c->end - c->p));
    return fail(c, msg);
  }
  c->p++;
  return 0;
}

/* Reads a JSON string; *out gets a malloc'd copy (escapes decoded for the
 * ASCII subset; \uXXXX kept as '?', names cannot contain them anyway). */
static int read_string(cursor* c, char** out) {
  skip_ws(c);
  if (c->p >= c->end || *c->p != '"') return fail(c, "expected a string");
  c->p++;
  size_t cap = 16, n = 0;
  char* s = malloc(cap);
  if (!s) return fail(c, "out of memory");
  while (c->p < c->end && *c->p != '"') {
    char ch = *c->p++;
    if (ch == '\\') {
      if (c->p >= c->end) break;
      char e = *c->p++;
      switch (e) {
        case 'n': ch = '\n'; break;
        case 't': ch = '\t'; break;
        case 'r': ch = '\r'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'u':
          if (c->end - c->p < 4) { free(s); return fail(c, "bad \\u escape"); }
          c->p += 4;
          ch = '?';
          break;
        default: ch = e; break;
      }
    }
    if (n + 2 > cap) {
      cap *= 2;
      char* t = realloc(s, cap);
      if (!t) { free(s); return fail(c, "out of memory"); }
      s = t;
    }
    s[n++] = ch;
  }
  if (c->p >= c->end) { free(s); return fail(c, "unterminated string"); }
  c->p++;
  s[n] = '\0';
  if (out) *out = s; else free(s);
  return 0;
}

static int skip_value(cursor* c, int depth);

static int skip_container(cursor* c, char open, char close, int depth) {
  if (depth > 64) return fail(c, "nesting too deep");
  c->p++; /* open */
  (void)open;
  skip_ws(c);
  if (c->p < c->end && *c->p == close) { c->p++; return 0; }
  for (;;) {
    if (close == '}') {
      if (read_string(c, NULL) || expect(c, ':')) return -1;
    }
    if (skip_value(c, depth + 1)) return -1;
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') { c->p++; continue; }
    return expect(c, close);
  }
}

static int skip_value(cursor* c, int depth) {
  skip_ws(c);
  if (c->p >= c->end) return fail(c, "unexpected end");
  char ch = *c->p;
  if (ch == '"') return read_string(c, NULL);
  if (ch == '{') return skip_container(c, '{', '}', depth);
  if (ch == '[') return skip_container(c, '[', ']', depth);
  /* number, true, false, null */
  const char* start = c->p;
  while (c->p < c->end && strchr(",]} \n\r\t", *c->p) == NULL) c->p++;
  if (c->p == start) return fail(c, "bad value");
  return 0;
}

static int read_int(cursor* c, int* out) {
  skip_ws(c);
  char buf[32];
  size_t n = 0;
  while (c->p < c->end && n + 1 < sizeof buf && strchr("-+0123456789.eE", *c->p)) buf[n++] = *c->p++;
  buf[n] = '\0';
  if (n == 0) return fail(c, "funcId must be a number");
  *out = (int)strtod(buf, NULL);
  return 0;
}

static int read_methods(cursor* c, nf_func_entry* e) {
  if (expect(c, '[')) return -1;
  skip_ws(c);
  if (c->p < c->end && *c->p == ']') { c->p++; return 0; }
  for (;;) {
    char* m;
    if (read_string(c, &m)) return -1;
    if (e->n_methods >= NF_MAX_GRPC_METHODS) { free(m); return fail(c, "more than 64 grpcMethods"); }
    e->methods[e->n_methods++] = m;
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') { c->p++; continue; }
    return expect(c, ']');
  }
}

static int read_entry(cursor* c, nf_func_entry* e) {
  memset(e, 0, sizeof *e);
  e->id = -1;
  if (expect(c, '{')) return -1;
  skip_ws(c);
  if (c->p < c->end && *c->p == '}') { c->p++; return fail(c, "entry without funcName"); }
  for (;;) {
    char* key;
    if (read_string(c, &key) || expect(c, ':')) return -1;
    int rc;
    if (strcmp(key, "funcName") == 0) {
      free(e->name);
      rc = read_string(c, &e->name);
    } else if (strcmp(key, "funcId") == 0) {
      rc = read_int(c, &e->id);
    } else if (strcmp(key, "grpcMethods") == 0) {
      rc = read_methods(c, e);
    } else {
      rc = skip_value(c, 1);
    }
    free(key);
    if (rc) return -1;
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') { c->p++; continue; }
    if (expect(c, '}')) return -1;
    break;
  }
  if (!e->name) return fail(c, "entry without funcName");
  if (e->id < 1 || e->id > 255) return fail(c, "entry without a valid funcId");
  return 0;
}

static void free_entry(nf_func_entry* e) {
  free(e->name);
  for (int i = 0; i < e->n_methods; i++) free(e->methods[i]);
}

int nf_func_config_parse(const char* text, size_t len, nf_func_config* out, char* err, size_t errlen) {
  cursor c = {text, text + len, err, errlen};
  if (err && errlen) err[0] = '\0';
  out->n = 0;
  out->entries = NULL;
  if (expect(&c, '[')) return -1;
  int cap = 0;
  skip_ws(&c);
  if (c.p < c.end && *c.p == ']') return 0;
  for (;;) {
    if (out->n == cap) {
      cap = cap ? cap * 2 : 8;
      nf_func_entry* t = realloc(out->entries, (size_t)cap * sizeof *t);
      if (!t) { nf_func_config_free(out); return fail(&c, "out of memory"); }
      out->entries = t;
    }
    if (read_entry(&c, &out->entries[out->n])) {
      free_entry(&out->entries[out->n]);
      nf_func_config_free(out);
      return -1;
    }
    out->n++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == ',') { c.p++; continue; }
    if (expect(&c, ']')) { nf_func_config_free(out); return -1; }
    return 0;
  }
}

void nf_func_config_free(nf_func_config* cfg) {
  for (int i = 0; i < cfg->n; i++) free_entry(&cfg->entries[i]);
  free(cfg->entries);
  cfg->entries = NULL;
  cfg->n = 0;
}

const nf_func_entry* nf_func_config_by_name(const nf_func_config* cfg, const char* name) {
  for (int i = 0; i < cfg->n; i++)
    if (strcmp(cfg->entries[i].name, name) == 0) return &cfg->entries[i];
  return NULL;
}

const nf_func_entry* nf_func_config_by_id(const nf_func_config* cfg, int id) {
  for (int i = 0; i < cfg->n; i++)
    if (cfg->entries[i].id == id) return &cfg->entries[i];
  return NULL;
}
