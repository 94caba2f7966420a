/*
 * How the runtime starts (see ARCHITECTURE.md, "Merging, step by step", and
 * docs/DESIGN-NOTES.md).
 *
 * Injected by the launcher with no entry call: the ELF constructor finds the
 * host's routing hook and $FAAS_ROOT_PATH_FOR_IPC/merge.sock and only arms a
 * one-shot SIGURG handler (a sigaction, inside the injector's call). Right
 * after detaching, the launcher, which still holds the worker idle, sends
 * SIGURG to its main thread; the handler starts the control thread, which
 * connects and says HELLO. Creating the thread is most of the cost of
 * starting, and this keeps it out of the injector's call.
 *
 * Starting a thread is not async-signal-safe in general; it is when the
 * signal interrupted an async-signal-safe function (POSIX 2.4.3). So the
 * handler proves it from the interrupted context: the thread sits on the
 * syscall instruction of libc's read() with the restart of SYS_read pending
 * (SA_RESTART rewound it). Anywhere else it starts nothing and the launcher,
 * seeing no HELLO, falls back to the entry. errno is preserved.
 *
 * Entry: int nightfuse_merge_start(const char* control_socket_path), for any
 * other caller and for diagnosis: connects, starts the control thread and
 * returns 0, or 2 if this process is not a Nightfuse worker host (no routing
 * hook), 3 if the thread cannot be started, 4 if the path is too long, 5 if
 * it cannot connect. A no-op while the control thread runs; after the
 * launcher disconnected it starts a new one.
 */
#include "runtime.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <ucontext.h>
#include <unistd.h>

_Atomic int g_running;
int g_event_fd = -1;
int (*g_host_ipc)(const char*, const char*, size_t, const char**, size_t*);
int (*g_host_ipc_from)(const char*, const char*, const char*, size_t, const char**, size_t*);
static char g_socket_path[108];
static nf_mp_writer g_hello; /* used before the control thread serves */

/* Before the control thread serves: fault handlers in place, the fault event fd open. */
static void prepare_runtime(void) {
  nf_install_handlers();
  if (g_event_fd < 0) g_event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

/* Connects to the launcher and says HELLO; the socket, or -1. */
static int connect_and_hello(const char* path) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
  if (s < 0 || connect(s, (struct sockaddr*)&addr, sizeof addr) != 0) {
    if (s >= 0) close(s);
    return -1;
  }
  nf_mp_writer* w = &g_hello;
  nf_mp_begin(w, NF_MP_HELLO, 0, 0);
  const char* fid = getenv("FAAS_FUNC_ID");
  const char* cid = getenv("FAAS_CLIENT_ID");
  nf_mp_u32(w, (uint32_t)getpid());
  nf_mp_u32(w, fid ? (uint32_t)atoi(fid) : 0);
  nf_mp_u32(w, cid ? (uint32_t)atoi(cid) : 0);
  nf_mp_str(w, VERSION);
  nf_mp_end(w);
  if (send(s, w->buf, w->len, MSG_NOSIGNAL) != (ssize_t)w->len) {
    close(s);
    return -1;
  }
  return s;
}

/* Started from the signal handler: connect on this thread, outside the injector's call. */
static void* autostart_thread(void* arg) {
  (void)arg;
  prepare_runtime();
  for (int i = 0; i < 50; i++) {
    g_sock = connect_and_hello(g_socket_path);
    if (g_sock >= 0) return nf_control_thread(NULL);
    usleep(2000);
  }
  atomic_store(&g_running, 0);
  return NULL;
}

static int spawn_thread(void* (*fn)(void*)) {
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int e = pthread_create(&t, &attr, fn, NULL);
  pthread_attr_destroy(&attr);
  return e;
}

static int find_host(void) {
  g_hook = dlsym(RTLD_DEFAULT, "nightfuse_route_hook");
  g_host_ipc = dlsym(RTLD_DEFAULT, "nightfuse_host_invoke_ipc");
  g_host_ipc_from = dlsym(RTLD_DEFAULT, "nightfuse_host_invoke_ipc_from"); /* optional (older hosts) */
  g_test_pause = dlsym(RTLD_DEFAULT, "nightfuse_merge_test_pause");        /* only test hosts export it */
  return g_hook && g_host_ipc;
}

static struct sigaction g_old_urg;
static _Atomic int g_urg_armed;
static uintptr_t g_read_lo, g_read_hi; /* libc's read(): where a thread parked in read(2) sits */
NF_EXPORT _Atomic int nightfuse_merge_start_refused; /* SIGURGs that found the thread elsewhere (for tests) */

static void disarm_start_signal(void) {
  if (atomic_exchange(&g_urg_armed, 0)) sigaction(SIGURG, &g_old_urg, NULL);
}

#pragma weak _dl_find_object

/* The size of function `name` at `fn`, from its library's GNU hash table (a
 * dladdr would scan every symbol of libc, inside the injector's call). */
static size_t function_size(void* fn, const char* name) {
  struct dl_find_object fo;
  if (!_dl_find_object || _dl_find_object(fn, &fo) != 0 || !fo.dlfo_link_map) return 0;
  const ElfW(Sym)* symtab = NULL;
  const char* strtab = NULL;
  const uint32_t* gnu = NULL;
  for (const ElfW(Dyn)* d = fo.dlfo_link_map->l_ld; d->d_tag != DT_NULL; d++) {
    if (d->d_tag == DT_SYMTAB) symtab = (const ElfW(Sym)*)d->d_un.d_ptr;
    else if (d->d_tag == DT_STRTAB) strtab = (const char*)d->d_un.d_ptr;
    else if (d->d_tag == DT_GNU_HASH) gnu = (const uint32_t*)d->d_un.d_ptr;
  }
  if (!symtab || !strtab || !gnu || gnu[0] == 0) return 0; /* (libc's dynamic section is relocated in place) */
  uint32_t h = 5381;
  for (const char* c = name; *c; c++) h = h * 33 + (uint8_t)*c;
  const uint32_t* buckets = gnu + 4 + gnu[2] * (sizeof(ElfW(Addr)) / 4);
  const uint32_t* chain = buckets + gnu[0];
  for (uint32_t i = buckets[h % gnu[0]]; i >= gnu[1]; i++) {
    const ElfW(Sym)* sym = &symtab[i];
    if ((chain[i - gnu[1]] | 1) == (h | 1) && strcmp(strtab + sym->st_name, name) == 0 &&
        (uintptr_t)fo.dlfo_link_map->l_addr + sym->st_value == (uintptr_t)fn)
      return sym->st_size;
    if (chain[i - gnu[1]] & 1) break;
  }
  return 0;
}

static bool interrupted_in_read(const ucontext_t* uc) {
  uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
  if (uc->uc_mcontext.gregs[REG_RAX] != SYS_read || pc < g_read_lo || pc + 2 > g_read_hi) return false;
  const uint8_t* insn = (const uint8_t*)pc;
  return insn[0] == 0x0f && insn[1] == 0x05; /* syscall, about to be restarted */
}

static void on_start_signal(int sig, siginfo_t* si, void* uctx) {
  (void)sig;
  (void)si;
  int saved_errno = errno;
  if (!interrupted_in_read(uctx)) {
    atomic_fetch_add(&nightfuse_merge_start_refused, 1);
  } else {
    disarm_start_signal();
    if (!atomic_exchange(&g_running, 1) && spawn_thread(autostart_thread) != 0) atomic_store(&g_running, 0);
  }
  errno = saved_errno;
}

__attribute__((constructor)) static void autostart(void) {
  const char* root = getenv("FAAS_ROOT_PATH_FOR_IPC");
  if (!root || !find_host()) return;
  if (snprintf(g_socket_path, sizeof g_socket_path, "%s/merge.sock", root) >= (int)sizeof g_socket_path) return;
  if (access(g_socket_path, F_OK) != 0) return;
#ifdef __SANITIZE_ADDRESS__
  /* libc's own read, not the sanitizer's interceptor (which calls it). */
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  void* libc_read = libc ? dlsym(libc, "read") : NULL;
  if (libc) dlclose(libc);
#else
  void* libc_read = (void*)read; /* this runs inside the injector's call: keep it to one lookup */
#endif
  size_t size = libc_read ? function_size(libc_read, "read") : 0;
  if (!size) return;
  g_read_lo = (uintptr_t)libc_read;
  g_read_hi = g_read_lo + size;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_start_signal;
  sa.sa_flags = SA_RESTART | SA_SIGINFO; /* the interrupted read(2) resumes */
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGURG, &sa, &g_old_urg) == 0) atomic_store(&g_urg_armed, 1);
}

NF_EXPORT int nightfuse_merge_start(const char* socket_path) {
  disarm_start_signal();
  if (atomic_load(&g_running)) return 0;
  if (!find_host()) return 2;
  if (!socket_path || strlen(socket_path) >= sizeof g_socket_path) return 4;
  snprintf(g_socket_path, sizeof g_socket_path, "%s", socket_path);
  prepare_runtime();
  /* Connect here so a failure is reported to whoever called the entry. */
  g_sock = connect_and_hello(g_socket_path);
  if (g_sock < 0) return 5;
  atomic_store(&g_running, 1);
  if (spawn_thread(nf_control_thread) != 0) {
    atomic_store(&g_running, 0);
    close(g_sock);
    g_sock = -1;
    return 3;
  }
  return 0;
}
