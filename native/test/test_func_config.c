/* The worker host's config reader: accepts what the launcher accepts, skips
 * unknown keys, refuses what it cannot read with a message. */
#include <stdio.h>
#include <string.h>

#include "func_config.h"

static int passes = 0, failures = 0;
#define CHECK(cond, what)                               \
  do {                                                  \
    if (cond) { passes++; printf("ok %s\n", what); }    \
    else { failures++; printf("not ok %s\n", what); }   \
  } while (0)

int main(void) {
  const char* good =
      "[ {\"funcName\": \"Foo\", \"funcId\": 1, \"minWorkers\": 2, \"library\": \"x/libfoo.so\","
      "   \"extra\": {\"nested\": [1, 2, {\"a\": null}]}},\n"
      "  {\"funcName\": \"grpc:a.B\", \"funcId\": 9, \"grpcMethods\": [\"M0\", \"M1\"], \"qsAsInput\": false},"
      "  {\"funcName\": \"Esc\\\"aped\", \"funcId\": 254} ]";
  nf_func_config cfg;
  char err[256];
  int rc = nf_func_config_parse(good, strlen(good), &cfg, err, sizeof err);
  CHECK(rc == 0, "parses a config with unknown keys");
  if (rc == 0) {
    CHECK(cfg.n == 3, "three entries");
    const nf_func_entry* e = nf_func_config_by_name(&cfg, "grpc:a.B");
    CHECK(e && e->id == 9 && e->n_methods == 2 && strcmp(e->methods[1], "M1") == 0, "grpc methods");
    CHECK(nf_func_config_by_id(&cfg, 1) && strcmp(nf_func_config_by_id(&cfg, 1)->name, "Foo") == 0, "by id");
    CHECK(nf_func_config_by_name(&cfg, "Esc\"aped") != NULL, "escaped name");
    CHECK(nf_func_config_by_name(&cfg, "Nope") == NULL, "unknown name");
    nf_func_config_free(&cfg);
  }
  const char* bad[] = {"{}", "[{\"funcId\": 1}]", "[{\"funcName\": \"A\"}]", "[{\"funcName\": \"A\", \"funcId\": 1",
                       "[{\"funcName\": \"A\", \"funcId\": 300}]", "[{\"funcName\": \"A\" \"funcId\": 1}]", ""};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    rc = nf_func_config_parse(bad[i], strlen(bad[i]), &cfg, err, sizeof err);
    char what[400];
    snprintf(what, sizeof what, "refuses bad config #%zu (%s)", i, err);
    CHECK(rc != 0 && strncmp(err, "func_config:", 12) == 0, what);
  }
  printf("%d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
