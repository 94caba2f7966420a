/*
 * ELF dynamic symbols: from a file (the target's libc, the library's own
 * copy for an early refusal), and from a library as the target loaded it,
 * read from the target's memory through its link_map. The second is the one
 * the entry address comes from: the file at the path may since have been
 * replaced (the target keeps its older copy), or be another file in another
 * mount namespace.
 */
#include "inject_internal.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static int read_at(int fd, void* buf, size_t len, off_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, (char*)buf + got, len - got, off + (off_t)got);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return 0;
}

int nf_inject_check_elf(const char* path, int want_shared, char* err, int errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, (size_t)errlen, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  Elf64_Ehdr eh;
  int rc = read_at(fd, &eh, sizeof eh, 0);
  close(fd);
  if (rc || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
    snprintf(err, (size_t)errlen, "%s is not an ELF file", path);
    return -1;
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
    snprintf(err, (size_t)errlen, "%s is not x86-64 (ELF class %d, machine %d); only x86-64 is supported", path,
             eh.e_ident[EI_CLASS], eh.e_ident[EI_CLASS] == ELFCLASS64 ? eh.e_machine : ((Elf32_Ehdr*)&eh)->e_machine);
    return -1;
  }
  if (want_shared && eh.e_type != ET_DYN) {
    snprintf(err, (size_t)errlen, "%s is not a shared object (ELF type %d)", path, eh.e_type);
    return -1;
  }
  if (!want_shared && eh.e_type != ET_EXEC && eh.e_type != ET_DYN) {
    snprintf(err, (size_t)errlen, "%s is not an executable (ELF type %d)", path, eh.e_type);
    return -1;
  }
  return 0;
}

/* Offers one symbol to the queries; the default version wins over a hidden one. */
static void offer(sym_query* q, int nq, const char* name, const Elf64_Sym* s, bool object, int hidden) {
  for (int k = 0; k < nq; k++) {
    if ((q[k].object != 0) != object || strcmp(name, q[k].name) != 0) continue;
    if (q[k].value == 0 || (q[k].hidden && !hidden)) {
      q[k].value = s->st_value;
      q[k].size = s->st_size;
      q[k].hidden = hidden;
    }
  }
}

static bool is_function(const Elf64_Sym* s) {
  int type = ELF64_ST_TYPE(s->st_info);
  return s->st_shndx != SHN_UNDEF && s->st_value != 0 && (type == STT_FUNC || type == STT_GNU_IFUNC);
}

static bool is_object(const Elf64_Sym* s) {
  return s->st_shndx != SHN_UNDEF && s->st_value != 0 && ELF64_ST_TYPE(s->st_info) == STT_OBJECT;
}

/*
 * Answers per file, kept: every worker maps the same libc and ld.so, and
 * reading a libc's symbol table costs ~0.3 ms, more than an injection's whole
 * stopped window. A file is the same while its file_id is; the queries must
 * match name for name.
 */
enum { SYM_CACHE = 8, SYM_CACHE_QUERIES = 8 };
typedef struct {
  file_id id;
  int nq;
  sym_query q[SYM_CACHE_QUERIES]; /* names point at the caller's (static) strings: compared by content */
  char names[SYM_CACHE_QUERIES][64];
  uint64_t first_load_vaddr;
  bool valid;
} sym_cache_entry;
static pthread_mutex_t g_sym_mu = PTHREAD_MUTEX_INITIALIZER;
static sym_cache_entry g_sym_cache[SYM_CACHE];
static unsigned g_sym_next;

static bool same_queries(const sym_cache_entry* e, const sym_query* q, int nq) {
  if (e->nq != nq) return false;
  for (int k = 0; k < nq; k++)
    if (strcmp(e->names[k], q[k].name) != 0 || (e->q[k].object != 0) != (q[k].object != 0)) return false;
  return true;
}

static bool cache_get(const file_id* id, sym_query* q, int nq, uint64_t* first) {
  bool hit = false;
  pthread_mutex_lock(&g_sym_mu);
  for (int i = 0; i < SYM_CACHE && !hit; i++) {
    const sym_cache_entry* e = &g_sym_cache[i];
    if (!e->valid || !nf_same_file(&e->id, id) || !same_queries(e, q, nq)) continue;
    for (int k = 0; k < nq; k++) {
      q[k].value = e->q[k].value;
      q[k].size = e->q[k].size;
      q[k].hidden = e->q[k].hidden;
    }
    *first = e->first_load_vaddr;
    hit = true;
  }
  pthread_mutex_unlock(&g_sym_mu);
  return hit;
}

static void cache_put(const file_id* id, const sym_query* q, int nq, uint64_t first) {
  if (nq > SYM_CACHE_QUERIES) return;
  for (int k = 0; k < nq; k++)
    if (strlen(q[k].name) >= sizeof g_sym_cache[0].names[0]) return;
  pthread_mutex_lock(&g_sym_mu);
  sym_cache_entry* e = &g_sym_cache[g_sym_next++ % SYM_CACHE];
  *e = (sym_cache_entry){.id = *id, .nq = nq, .first_load_vaddr = first, .valid = true};
  for (int k = 0; k < nq; k++) {
    e->q[k] = q[k];
    e->q[k].name = NULL;
    snprintf(e->names[k], sizeof e->names[k], "%s", q[k].name);
  }
  pthread_mutex_unlock(&g_sym_mu);
}

int nf_elf_dynsyms(const char* path, sym_query* q, int nq, uint64_t* first_load_vaddr, nf_inject_report* r) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nf_fail(r, "cannot open %s: %s", path, strerror(errno));
  struct stat fst;
  bool cacheable = fstat(fd, &fst) == 0;
  file_id id = cacheable ? nf_file_id(&fst) : (file_id){0};
  if (cacheable && cache_get(&id, q, nq, first_load_vaddr)) {
    close(fd);
    return 0;
  }
  int rc = -1;
  Elf64_Shdr* sh = NULL;
  Elf64_Sym* syms = NULL;
  char* strs = NULL;
  uint16_t* vers = NULL;
  Elf64_Ehdr eh;
  if (read_at(fd, &eh, sizeof eh, 0) || eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0) {
    nf_fail(r, "%s: unreadable ELF header or no section headers", path);
    goto out;
  }
  /* lowest PT_LOAD vaddr: the library's base is map start minus this */
  *first_load_vaddr = UINT64_MAX;
  for (int i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    if (read_at(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize))) break;
    if (ph.p_type == PT_LOAD && (ph.p_vaddr & ~0xFFFull) < *first_load_vaddr) *first_load_vaddr = ph.p_vaddr & ~0xFFFull;
  }
  if (*first_load_vaddr == UINT64_MAX) *first_load_vaddr = 0;
  sh = malloc(sizeof(Elf64_Shdr) * eh.e_shnum);
  if (!sh || read_at(fd, sh, sizeof(Elf64_Shdr) * eh.e_shnum, (off_t)eh.e_shoff)) {
    nf_fail(r, "%s: cannot read section headers", path);
    goto out;
  }
  int dynsym = -1, versym = -1;
  for (int i = 0; i < eh.e_shnum; i++) {
    if (sh[i].sh_type == SHT_DYNSYM) dynsym = i;
    if (sh[i].sh_type == SHT_GNU_versym) versym = i;
  }
  if (dynsym < 0 || sh[dynsym].sh_link >= eh.e_shnum) {
    nf_fail(r, "%s has no dynamic symbol table", path);
    goto out;
  }
  Elf64_Shdr* ss = &sh[dynsym];
  Elf64_Shdr* st = &sh[ss->sh_link];
  size_t nsyms = ss->sh_size / sizeof(Elf64_Sym);
  syms = malloc(ss->sh_size);
  strs = malloc(st->sh_size + 1);
  if (!syms || !strs || read_at(fd, syms, ss->sh_size, (off_t)ss->sh_offset) ||
      read_at(fd, strs, st->sh_size, (off_t)st->sh_offset)) {
    nf_fail(r, "%s: cannot read the dynamic symbols", path);
    goto out;
  }
  strs[st->sh_size] = '\0';
  if (versym >= 0 && sh[versym].sh_size >= nsyms * 2) {
    vers = malloc(sh[versym].sh_size);
    if (vers && read_at(fd, vers, sh[versym].sh_size, (off_t)sh[versym].sh_offset)) {
      free(vers);
      vers = NULL;
    }
  }
  for (size_t i = 0; i < nsyms; i++) {
    bool object = is_object(&syms[i]);
    if ((!object && !is_function(&syms[i])) || syms[i].st_name >= st->sh_size) continue;
    offer(q, nq, strs + syms[i].st_name, &syms[i], object, vers ? (vers[i] & 0x8000) != 0 : 0);
  }
  rc = 0;
  if (cacheable) cache_put(&id, q, nq, *first_load_vaddr);
out:
  free(sh);
  free(syms);
  free(strs);
  free(vers);
  close(fd);
  return rc;
}

/* ------------------------------------------------ in the target's memory */

static int peek(pid_t pid, uint64_t addr, void* buf, size_t len) {
  struct iovec local = {buf, len}, remote = {(void*)addr, len};
  return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static uint32_t gnu_hash(const char* s) {
  uint32_t h = 5381;
  for (; *s; s++) h = h * 33 + (uint8_t)*s;
  return h;
}

static uint32_t sysv_hash(const char* s) {
  uint32_t h = 0;
  for (; *s; s++) {
    h = (h << 4) + (uint8_t)*s;
    uint32_t g = h & 0xf0000000u;
    if (g) h ^= g >> 24;
    h &= ~g;
  }
  return h;
}

typedef struct {
  pid_t pid;
  uint64_t symtab, strtab, versym;
  size_t strsz;
} remote_image;

/* Symbol i, if it is a defined function called `name`: its value, and whether it is a hidden version. */
static int match(const remote_image* im, uint32_t i, const char* name, uint64_t* value, int* hidden) {
  Elf64_Sym s;
  if (peek(im->pid, im->symtab + (uint64_t)i * sizeof s, &s, sizeof s) || !is_function(&s)) return 0;
  size_t n = strlen(name) + 1;
  if (s.st_name + n > im->strsz) return 0;
  char buf[512];
  if (n > sizeof buf || peek(im->pid, im->strtab + s.st_name, buf, n) || memcmp(buf, name, n) != 0) return 0;
  uint16_t v = 0;
  if (im->versym) peek(im->pid, im->versym + (uint64_t)i * 2, &v, 2);
  *value = s.st_value;
  *hidden = (v & 0x8000) != 0;
  return 1;
}

int nf_remote_dlsym(pid_t pid, uint64_t lm, const char* name, uint64_t* addr, uint64_t* l_ld_out) {
  /* struct link_map's public head: l_addr, l_name, l_ld (<link.h>). */
  uint64_t head[3];
  if (peek(pid, lm, head, sizeof head)) return -1;
  uint64_t l_addr = head[0], l_ld = head[2];
  *l_ld_out = l_ld;
  remote_image im = {.pid = pid};
  uint64_t gnuhash = 0, hash = 0;
  Elf64_Dyn d[64];
  for (int chunk = 0; chunk < 16; chunk++) {
    if (peek(pid, l_ld + (uint64_t)chunk * sizeof d, d, sizeof d)) return -1;
    int end = 0;
    for (size_t i = 0; i < 64 && !end; i++) {
      /* ld.so relocates these in place when the dynamic section is writable; not otherwise. */
      uint64_t p = d[i].d_un.d_ptr < l_addr ? d[i].d_un.d_ptr + l_addr : d[i].d_un.d_ptr;
      switch (d[i].d_tag) {
        case DT_NULL: end = 1; break;
        case DT_SYMTAB: im.symtab = p; break;
        case DT_STRTAB: im.strtab = p; break;
        case DT_STRSZ: im.strsz = d[i].d_un.d_val; break;
        case DT_VERSYM: im.versym = p; break;
        case DT_GNU_HASH: gnuhash = p; break;
        case DT_HASH: hash = p; break;
      }
    }
    if (end) break;
  }
  if (!im.symtab || !im.strtab || (!gnuhash && !hash)) return -1;
  uint64_t best = 0;
  int best_hidden = 1;
  uint64_t value;
  int hidden;
  if (gnuhash) {
    uint32_t h4[4]; /* nbuckets, symoffset, bloom words, bloom shift */
    if (peek(pid, gnuhash, h4, sizeof h4) || h4[0] == 0) return -1;
    uint32_t h = gnu_hash(name), bucket;
    uint64_t buckets = gnuhash + 16 + (uint64_t)h4[2] * 8;
    uint64_t chains = buckets + (uint64_t)h4[0] * 4;
    if (peek(pid, buckets + (h % h4[0]) * 4ull, &bucket, 4)) return -1;
    for (uint32_t i = bucket; bucket >= h4[1]; i++) {
      uint32_t ch;
      if (peek(pid, chains + (uint64_t)(i - h4[1]) * 4, &ch, 4)) return -1;
      if ((ch | 1) == (h | 1) && match(&im, i, name, &value, &hidden) && (!best || (best_hidden && !hidden))) {
        best = value;
        best_hidden = hidden;
      }
      if (ch & 1) break;
    }
  } else {
    uint32_t nb[2]; /* nbucket, nchain */
    if (peek(pid, hash, nb, sizeof nb) || nb[0] == 0) return -1;
    uint32_t i;
    if (peek(pid, hash + 8 + (sysv_hash(name) % nb[0]) * 4ull, &i, 4)) return -1;
    for (int guard = 0; i != 0 && i < nb[1] && guard < 65536; guard++) {
      if (match(&im, i, name, &value, &hidden) && (!best || (best_hidden && !hidden))) {
        best = value;
        best_hidden = hidden;
      }
      if (peek(pid, hash + 8 + 4ull * nb[0] + 4ull * i, &i, 4)) return -1;
    }
  }
  if (!best) return -1;
  *addr = l_addr + best;
  return 0;
}
