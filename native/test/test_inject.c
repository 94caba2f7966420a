/*
 * Native tests of the injector: real target processes, real ptrace.
 * Usage: test_inject <build dir>   (finds targets/ and libprobe.so there)
 * Prints "ok ..."/"not ok ..." lines and "N passed, N failed".
 */
#include "harness.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#include "nightfuse/inject.h"

/* Waits (up to 2 s) until /proc/<pid>/syscall starts with `what` ("0 " = blocked in read, "running" = user code). */
static void wait_syscall(pid_t pid, const char* what) {
  char path[64], buf[64];
  snprintf(path, sizeof path, "/proc/%d/syscall", pid);
  for (int i = 0; i < 2000; i++) {
    FILE* f = fopen(path, "r");
    if (f) {
      int ok = fgets(buf, sizeof buf, f) && strncmp(buf, what, strlen(what)) == 0;
      fclose(f);
      if (ok) return;
    }
    usleep(1000);
  }
}






static int inject(pid_t pid, const char* lib, const char* entry, const char* arg, int safe_wait, nf_inject_report* r) {
  char path[1100];
  if (lib[0] == '/') snprintf(path, sizeof path, "%s", lib);
  else snprintf(path, sizeof path, "%s/%s", dir, lib);
  return nf_inject(pid, path, entry, arg, safe_wait, 3000, r);
}

static void left_running(target* t, const char* what) {
  CHECK(tracer_pid(t->pid) == 0, "%s: target not traced afterwards", what);
  char st = state_of(t->pid);
  CHECK(st == 'S' || st == 'R', "%s: target not stopped (state %c)", what, st);
  CHECK(echo_ok(t, what), "%s: target still answers", what);
}

static void test_read_target(void) {
  target t;
  CHECK(start_target("target_read", NULL, &t) == 0, "start target blocked in read");
  char out[128], want[64];
  snprintf(out, sizeof out, "/tmp/nf-probe-%d", (int)getpid());
  snprintf(want, sizeof want, "pid=%d", t.pid);
  for (int i = 0; i < 3; i++) {
    nf_inject_report r;
    unlink(out);
    wait_syscall(t.pid, "0 ");
    int rc = inject(t.pid, "libprobe.so", "probe_entry", out, 50, &r);
    CHECK(rc == 0 && r.ok, "inject into a target blocked in read (#%d): %s", i, r.error);
    CHECK(r.safe_point == 1 && r.syscall_nr == SYS_read && r.thread_used == t.pid,
          "used the main thread at a safe point (syscall %d)", r.syscall_nr);
    CHECK(file_has(out, want), "entry ran in the target with its argument");
    CHECK(r.stopped_us > 0 && r.stopped_us <= r.total_us, "timings: stopped %.0f us of %.0f us", r.stopped_us, r.total_us);
    left_running(&t, "after injection");
  }
  unlink(out);
  stop_target(&t);
}

static void test_spin_target(void) {
  char page_path[128];
  snprintf(page_path, sizeof page_path, "/dev/shm/nf-spin-%d", (int)getpid());
  int fd = open(page_path, O_CREAT | O_RDWR | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, 4096) != 0) {
    CHECK(0, "cannot make the spin target's shared page %s: %s", page_path, strerror(errno));
    return;
  }
  volatile uint64_t* page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  target t;
  CHECK(start_target("target_spin", page_path, &t) == 0, "start target spinning in user code");
  /* Past its write of "ready" and in the loop: the loop counts in word 3. */
  for (int i = 0; i < 2000 && page[3] < 1000; i++) usleep(1000);
  nf_inject_report r;
  int rc = inject(t.pid, "libprobe.so", "probe_fail", "", -1, &r);
  CHECK(rc != 0 && strstr(r.error, "no thread") != NULL, "safe_wait -1 refuses to use running user code: %s (syscall %d)", r.error, r.syscall_nr);
  rc = inject(t.pid, "libprobe.so", "", "", 20, &r);
  CHECK(rc == 0 && r.ok, "inject into a spinning target after the safe-point wait: %s", r.error);
  CHECK(r.safe_point == 0 && r.attempts > 1, "reported no safe point (%d attempts)", r.attempts);
  page[0] = 41;
  for (int i = 0; i < 2000000 && page[1] != 42; i++) usleep(1);
  CHECK(page[1] == 42 && page[2] == 1, "spinning target still answers with its FP state intact");
  CHECK(tracer_pid(t.pid) == 0, "spinning target not traced");
  stop_target(&t);
  munmap((void*)page, 4096);
  close(fd);
  unlink(page_path);
}

static void test_threads_target(void) {
  target t;
  CHECK(start_target("target_threads", NULL, &t) == 0, "start target with 8 threads");
  usleep(20000);
  for (int i = 0; i < 3; i++) {
    nf_inject_report r;
    int rc = inject(t.pid, "libprobe.so", "", "", 50, &r);
    CHECK(rc == 0 && r.threads_seen == 9 && r.safe_point, "inject with 9 threads (seen %d): %s", r.threads_seen, r.error);
    left_running(&t, "threads target");
  }
  stop_target(&t);
}

static void test_signals_target(void) {
  target t;
  CHECK(start_target("target_signals", NULL, &t) == 0, "start target receiving signals");
  char line[128];
  int before = 0, after = 0;
  line[0] = '\0';
  for (int i = 0; i < 20; i++) {
    nf_inject_report r;
    int rc = inject(t.pid, "libprobe.so", "probe_fail", "", 50, &r);
    CHECK(rc != 0 && r.entry_result == 7 && strstr(r.error, "returned 7"), "entry result reported with signals flowing (#%d): %s", i, r.error);
  }
  if (ask(&t, "count", line, sizeof line, 3000) == 0) sscanf(line, "count %d", &before);
  usleep(50000);
  if (ask(&t, "count", line, sizeof line, 3000) == 0) sscanf(line, "count %d", &after);
  CHECK(after > before && before > 0, "signals keep arriving after injections (%d -> %d)", before, after);
  CHECK(strstr(line, "errors 0") != NULL, "read(2) was always restarted, never failed: %s", line);
  left_running(&t, "signals target");
  stop_target(&t);
}

static void test_failures(void) {
  target t;
  CHECK(start_target("target_read", NULL, &t) == 0, "start target for failure cases");
  nf_inject_report r;

  CHECK(inject(t.pid, "/nonexistent/libx.so", "e", "", 50, &r) != 0 && strstr(r.error, "No such file"), "missing library: %s", r.error);
  CHECK(inject(t.pid, "/etc/hostname", "e", "", 50, &r) != 0 && strstr(r.error, "not an ELF"), "not a library: %s", r.error);
  CHECK(inject(t.pid, "libunresolved.so", "", "", 50, &r) != 0 && strstr(r.error, "dlopen") && strstr(r.error, "undefined symbol"),
        "dlopen failure carries the target's dlerror: %s", r.error);
  left_running(&t, "after dlopen failure");
  CHECK(inject(t.pid, "libprobe.so", "no_such_entry", "", 50, &r) != 0 && strstr(r.error, "no_such_entry not found") && strstr(r.error, "not touched") && r.threads_seen == 0, "missing entry refused before attaching: %s", r.error);
  left_running(&t, "after missing entry");
  CHECK(inject(t.pid, "libprobe.so", "probe_crash", "", 50, &r) != 0 && strstr(r.error, "SIGSEGV"), "crashing entry: %s", r.error);
  left_running(&t, "after crashing entry");
  CHECK(inject(999999, "libprobe.so", "", "", 50, &r) != 0 && strstr(r.error, "no process"), "no such pid: %s", r.error);
  CHECK(nf_inject(getpid(), "/bin/true", "", "", 0, 1000, &r) != 0 && strstr(r.error, "own process"), "own process refused");

  /* EPERM: an unprivileged child may not trace our target. */
  int pfd[2];
  if (pipe(pfd) == 0) {
    pid_t c = fork();
    if (c == 0) {
      close(pfd[0]);
      if (setgid(65534) || setuid(65534)) _exit(3);
      nf_inject_report cr;
      char path[1100];
      snprintf(path, sizeof path, "%s/libprobe.so", dir);
      nf_inject(t.pid, path, "", "", 50, 1000, &cr);
      if (write(pfd[1], cr.error, strlen(cr.error) + 1) < 0) _exit(4);
      _exit(cr.ok ? 1 : 0);
    }
    close(pfd[1]);
    char msg[600] = "";
    ssize_t n = read(pfd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(pfd[0]);
    int st;
    waitpid(c, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(msg, "not permitted to trace"),
          "EPERM reported: %s", msg);
  }
  left_running(&t, "after EPERM");

  /* Non-x86-64: the ELF check refuses other machines. */
  char fake[128];
  snprintf(fake, sizeof fake, "/tmp/nf-aarch64-%d", (int)getpid());
  char src[1100];
  snprintf(src, sizeof src, "%s/targets/target_read", dir);
  int in = open(src, O_RDONLY), outfd = open(fake, O_CREAT | O_TRUNC | O_WRONLY, 0755);
  char buf[4096];
  ssize_t n = read(in, buf, sizeof buf);
  if (n > 20) {
    buf[18] = (char)183; /* EM_AARCH64 */
    buf[19] = 0;
    if (write(outfd, buf, (size_t)n) != n) n = 0;
  }
  close(in);
  close(outfd);
  char err[256];
  CHECK(nf_inject_check_elf(fake, 0, err, sizeof err) != 0 && strstr(err, "not x86-64"), "non-x86-64 refused: %s", err);
  unlink(fake);
  stop_target(&t);

  /* A target that exits during injection. */
  CHECK(start_target("target_read", NULL, &t) == 0, "start target that will exit");
  CHECK(inject(t.pid, "libprobe.so", "probe_exit", "", 50, &r) != 0 && r.target_exited && strstr(r.error, "exited"),
        "target exiting during injection: %s", r.error);
  int st = 0;
  waitpid(t.pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "its exit status stays for its parent (%d)", WEXITSTATUS(st));
  close(t.to);
  close(t.from);

  /* Statically linked: no libc.so, no dlopen. */
  CHECK(start_target("target_static", NULL, &t) == 0, "start statically linked target");
  CHECK(inject(t.pid, "libprobe.so", "", "", 50, &r) != 0 && strstr(r.error, "statically linked"), "static target refused: %s", r.error);
  left_running(&t, "static target");
  stop_target(&t);
}

int main(int argc, char** argv) {
  find_build_dir(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  test_read_target();
  test_spin_target();
  test_threads_target();
  test_signals_target();
  test_failures();
  return finish();
}
