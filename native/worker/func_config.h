/* The few func_config.json fields a worker needs: name <-> id, gRPC methods. */
#ifndef NIGHTFUSE_FUNC_CONFIG_H_
#define NIGHTFUSE_FUNC_CONFIG_H_

#include <stddef.h>

#define NF_MAX_GRPC_METHODS 64

typedef struct {
  char* name;
  int id;
  int n_methods;
  char* methods[NF_MAX_GRPC_METHODS];
} nf_func_entry;

typedef struct {
  int n;
  nf_func_entry* entries;
} nf_func_config;

/* Parses the JSON text; returns 0 or -1 with a message in err. */
int nf_func_config_parse(const char* text, size_t len, nf_func_config* out, char* err, size_t errlen);
void nf_func_config_free(nf_func_config* cfg);
const nf_func_entry* nf_func_config_by_name(const nf_func_config* cfg, const char* name);
const nf_func_entry* nf_func_config_by_id(const nf_func_config* cfg, int id);

#endif
