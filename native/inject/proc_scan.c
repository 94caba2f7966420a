/*
 * What /proc says about an injection target, read without stopping anything.
 */
#include "inject_internal.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

static ssize_t read_small(const char* path, char* buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  return n;
}

char nf_thread_state(pid_t pid, pid_t tid) {
  char path[96], buf[512];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  if (read_small(path, buf, sizeof buf) <= 0) return 0;
  char* rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' ? rp[2] : 0;
}

thread_kind nf_thread_kind(pid_t pid, pid_t tid, long* nr, long* arg1) {
  char st = nf_thread_state(pid, tid);
  *nr = -1;
  *arg1 = 0;
  if (st == 0 || st == 'Z' || st == 'X') return TH_GONE;
  if (st == 'D') return TH_DSTATE;
  if (st == 'T' || st == 't') return TH_STOPPED;
  char path[96], buf[256];
  snprintf(path, sizeof path, "/proc/%d/task/%d/syscall", pid, tid);
  if (read_small(path, buf, sizeof buf) <= 0) return TH_GONE;
  if (strncmp(buf, "running", 7) == 0) return TH_RUNNING;
  char* end;
  long n = strtol(buf, &end, 10);
  if (n < 0) return TH_BLOCKED;
  *nr = n;
  strtoull(end, &end, 16); /* "<nr> 0x<arg0> 0x<arg1> ..." */
  *arg1 = (long)strtoull(end, NULL, 16);
  return TH_SYSCALL;
}

int nf_list_threads(pid_t pid, thread_info* out, int max) {
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/task", pid);
  DIR* d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent* e;
  while ((e = readdir(d)) && n < max) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t tid = (pid_t)atoi(e->d_name);
    out[n].tid = tid;
    out[n].kind = nf_thread_kind(pid, tid, &out[n].nr, &out[n].arg1);
    n++;
  }
  closedir(d);
  return n;
}

/*
 * The system calls a thread waits in while holding no libc-internal lock.
 * glibc holds malloc's arena lock around brk/mmap/munmap/madvise and a FILE's
 * lock around write; a thread in futex may wait for one lock while holding
 * another (a lock's futex wait is FUTEX_WAIT; condition variables,
 * semaphores and joins wait with FUTEX_WAIT_BITSET, having released their
 * mutex). None of glibc's locked sections waits in the calls below. (The
 * loader reads a library under its lock, but that lock is recursive and a
 * dlopen nested in a constructor is legal.)
 */
bool nf_syscall_is_idle_wait(long nr, long arg1) {
  switch (nr) {
    case SYS_futex:
      return (arg1 & 127) == 9; /* FUTEX_WAIT_BITSET, with or without FUTEX_PRIVATE_FLAG / CLOCK_REALTIME */
    case SYS_read: case SYS_pread64: case SYS_readv: case SYS_preadv: case SYS_preadv2:
    case SYS_poll: case SYS_ppoll: case SYS_select: case SYS_pselect6:
    case SYS_epoll_wait: case SYS_epoll_pwait:
#ifdef SYS_epoll_pwait2
    case SYS_epoll_pwait2:
#endif
    case SYS_nanosleep: case SYS_clock_nanosleep: case SYS_pause: case SYS_rt_sigsuspend: case SYS_rt_sigtimedwait:
    case SYS_wait4: case SYS_waitid:
    case SYS_accept: case SYS_accept4: case SYS_recvfrom: case SYS_recvmsg: case SYS_recvmmsg:
    case SYS_msgrcv: case SYS_io_getevents:
      return true;
    default:
      return false;
  }
}

int nf_ignored_signals(pid_t pid, uint64_t* ign) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  if (read_small(path, buf, sizeof buf) <= 0) return -1;
  const char* p = strstr(buf, "\nSigIgn:");
  if (!p) return -1;
  *ign = strtoull(p + 8, NULL, 16);
  return 0;
}

static bool is_libc(const char* base) {
  return strncmp(base, "libc.so", 7) == 0 || (strncmp(base, "libc-", 5) == 0 && strstr(base, ".so"));
}

static bool is_ldso(const char* base) {
  return strncmp(base, "ld-linux", 8) == 0 || (strncmp(base, "ld-", 3) == 0 && strstr(base, ".so"));
}

int nf_find_libc(pid_t pid, libc_map* libc, libc_map* ld, nf_inject_report* r) {
  char maps[64];
  snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
  FILE* f = fopen(maps, "re");
  if (!f) return nf_fail(r, "cannot read %s: %s", maps, strerror(errno));
  libc->start = 0;
  ld->start = 0;
  char line[4352];
  while ((!libc->start || !ld->start) && fgets(line, sizeof line, f)) {
    unsigned long long start, end, off;
    char perms[8], file[4096] = "";
    if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %4095[^\n]", &start, &end, perms, &off, file) < 4 || off != 0) continue;
    const char* base = strrchr(file, '/');
    base = base ? base + 1 : file;
    libc_map* out = !libc->start && is_libc(base) ? libc : !ld->start && is_ldso(base) ? ld : NULL;
    if (!out) continue;
    snprintf(out->path, sizeof out->path, "/proc/%d/root%s", pid, file);
    out->start = start;
  }
  fclose(f);
  if (!libc->start) return nf_fail(r, "target %d has no libc.so mapped (statically linked?): there is no dlopen to call in it", pid);
  return 0;
}

/* pthread_mutex_t on x86-64 (the glibc ABI, the same in every version): the words read here. */
enum { MUTEX_LOCK = 0, MUTEX_COUNT = 4, MUTEX_OWNER = 8, MUTEX_KIND = 16, MUTEX_SIZE = 40 };
#define MUTEX_RECURSIVE(kind) (((kind) & 0x7f) == 1)

static int32_t word_at(const uint8_t* p, size_t off) {
  int32_t v;
  memcpy(&v, p + off, 4);
  return v;
}

/* `size` bytes of the target's memory at `addr`, in a buffer to free; NULL if unreadable. */
static uint8_t* read_remote(pid_t pid, uint64_t addr, uint64_t size) {
  if (size == 0 || size > (1u << 20)) return NULL;
  uint8_t* buf = malloc(size);
  if (!buf) return NULL;
  struct iovec local = {buf, size}, remote = {(void*)addr, size};
  if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)size) {
    free(buf);
    return NULL;
  }
  return buf;
}

pid_t nf_mutex_owner(pid_t pid, uint64_t addr) {
  uint8_t* m = read_remote(pid, addr, MUTEX_SIZE);
  if (!m) return 0;
  pid_t owner = word_at(m, MUTEX_OWNER);
  free(m);
  return owner > 0 ? owner : 0;
}

/*
 * glibc's loader serialises dlopen/dlclose (and its TLS and unique-symbol
 * tables) with recursive mutexes that live in _rtld_global; their offsets
 * differ between glibc versions, their shape does not (the pthread_mutex_t
 * ABI: lock, count, owner, nusers, kind). A held one names its owner's tid.
 * A word group of that shape whose owner is a thread of the target is taken
 * as held: random data matching it, with a live tid, is not to be expected.
 */
pid_t nf_loader_lock_holder(pid_t pid, uint64_t addr, uint64_t size, const thread_info* threads, int n) {
  if (size < MUTEX_KIND + 4) return -1;
  uint8_t* buf = read_remote(pid, addr, size);
  if (!buf) return -1;
  pid_t holder = 0;
  for (uint64_t off = 0; off + MUTEX_KIND + 4 <= size && holder == 0; off += 4) {
    const uint8_t* m = buf + off;
    int32_t lock = word_at(m, MUTEX_LOCK), owner = word_at(m, MUTEX_OWNER);
    uint32_t count = (uint32_t)word_at(m, MUTEX_COUNT);
    if (lock < 1 || lock > 2 || count < 1 || count > 4096 || owner <= 0 || !MUTEX_RECURSIVE(word_at(m, MUTEX_KIND))) continue;
    for (int i = 0; i < n; i++) {
      if (threads[i].tid == owner && threads[i].kind != TH_GONE) {
        holder = owner;
        break;
      }
    }
  }
  free(buf);
  return holder;
}

/*
 * _dl_load_lock's address: in every glibc since libpthread joined libc (2.34),
 * struct rtld_global has `size_t _dl_nns` (the namespaces in use, 1..16) and
 * right after it _dl_load_lock and _dl_load_write_lock, two recursive
 * pthread mutexes. That neighbourhood, found once in the target's copy,
 * names the lock; 0 if it is not there (another libc).
 */
uint64_t nf_find_load_lock(pid_t pid, uint64_t addr, uint64_t size) {
  if (size < 8 + 2 * MUTEX_SIZE) return 0;
  uint8_t* buf = read_remote(pid, addr, size);
  if (!buf) return 0;
  uint64_t found = 0;
  for (uint64_t off = 8; off + 2 * MUTEX_SIZE <= size; off += 8) {
    uint64_t nns;
    memcpy(&nns, buf + off - 8, 8);
    if (nns >= 1 && nns <= 16 && MUTEX_RECURSIVE(word_at(buf + off, MUTEX_KIND)) && MUTEX_RECURSIVE(word_at(buf + off + MUTEX_SIZE, MUTEX_KIND))) {
      found = addr + off;
      break;
    }
  }
  free(buf);
  return found;
}

int nf_mapping_identity(pid_t pid, uint64_t addr, uint64_t* dev, uint64_t* ino) {
  char maps[64];
  snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
  FILE* f = fopen(maps, "re");
  if (!f) return -1;
  char line[4352];
  int rc = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned long long start, end, inode;
    unsigned maj, min;
    if (sscanf(line, "%llx-%llx %*s %*s %x:%x %llu", &start, &end, &maj, &min, &inode) != 5) continue;
    if (addr < start || addr >= end) continue;
    if (inode == 0) break;
    *dev = makedev(maj, min);
    *ino = inode;
    rc = 0;
    break;
  }
  fclose(f);
  return rc;
}

/*
 * Code gadgets, found in the libc file the target maps (the same bytes it
 * executes) and cached per file: every worker maps the same libc, only at
 * another base.
 */
static pthread_mutex_t g_gadget_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  file_id id;
  uint64_t int3, restore_rt; /* vaddrs in the file's image, 0 if absent */
  int valid;
} g_gadget_cache;

static const uint8_t RESTORE_RT[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};

static int scan_file(int fd, uint64_t* int3, uint64_t* restore_rt, uint64_t* first_vaddr) {
  Elf64_Ehdr eh;
  if (pread(fd, &eh, sizeof eh, 0) != sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return -1;
  *int3 = *restore_rt = 0;
  *first_vaddr = UINT64_MAX;
  uint8_t* buf = malloc(1 << 16);
  if (!buf) return -1;
  for (int i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) != sizeof ph) break;
    if (ph.p_type != PT_LOAD) continue;
    if ((ph.p_vaddr & ~0xFFFull) < *first_vaddr) *first_vaddr = ph.p_vaddr & ~0xFFFull;
    if (!(ph.p_flags & PF_X)) continue;
    for (uint64_t off = 0; off < ph.p_filesz && (!*int3 || !*restore_rt);) {
      size_t want = ph.p_filesz - off < (1 << 16) ? (size_t)(ph.p_filesz - off) : (1 << 16);
      ssize_t n = pread(fd, buf, want, (off_t)(ph.p_offset + off));
      if (n <= (ssize_t)sizeof RESTORE_RT) break;
      for (ssize_t k = 0; k < n; k++) {
        if (!*int3 && buf[k] == 0xCC) *int3 = ph.p_vaddr + off + (uint64_t)k;
        if (!*restore_rt && buf[k] == RESTORE_RT[0] && k + (ssize_t)sizeof RESTORE_RT <= n &&
            memcmp(buf + k, RESTORE_RT, sizeof RESTORE_RT) == 0)
          *restore_rt = ph.p_vaddr + off + (uint64_t)k;
      }
      off += (uint64_t)n - sizeof RESTORE_RT; /* overlap: a pattern may straddle two reads */
    }
  }
  free(buf);
  if (*first_vaddr == UINT64_MAX) *first_vaddr = 0;
  return 0;
}

int nf_find_gadgets(const libc_map* libc, gadgets* g, nf_inject_report* r) {
  int fd = open(libc->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nf_fail(r, "cannot open the target's libc %s: %s", libc->path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return nf_fail(r, "cannot stat the target's libc %s: %s", libc->path, strerror(errno));
  }
  uint64_t int3 = 0, rrt = 0, first = 0;
  int rc = 0;
  pthread_mutex_lock(&g_gadget_mu);
  file_id id = nf_file_id(&st);
  if (g_gadget_cache.valid && nf_same_file(&g_gadget_cache.id, &id)) {
    int3 = g_gadget_cache.int3;
    rrt = g_gadget_cache.restore_rt;
  } else if (scan_file(fd, &int3, &rrt, &first) == 0) {
    /* Store as offsets from the image's lowest page: the base is per process. */
    int3 = int3 ? int3 - first + 1 : 0; /* +1: 0 stays "absent" */
    rrt = rrt ? rrt - first + 1 : 0;
    g_gadget_cache.id = id;
    g_gadget_cache.int3 = int3;
    g_gadget_cache.restore_rt = rrt;
    g_gadget_cache.valid = 1;
  } else {
    rc = nf_fail(r, "%s: unreadable ELF image", libc->path);
  }
  pthread_mutex_unlock(&g_gadget_mu);
  close(fd);
  g->int3 = int3 ? libc->start + int3 - 1 : 0;
  g->restore_rt = rrt ? libc->start + rrt - 1 : 0;
  return rc;
}
