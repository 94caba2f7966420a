/* Two builds of "the same library": B puts its functions in the opposite
 * order, so B's stale_entry sits where A has other(). An injector that takes
 * the entry's offset from the file now at the path while the target still
 * runs A jumps into other(). Each writes "<function>:<build>" to its argument. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#ifdef STALE_B
#define BUILD "B"
#else
#define BUILD "A"
#endif

static int note(const char* path, const char* what) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return 1;
  int rc = write(fd, what, strlen(what)) == (ssize_t)strlen(what) ? 0 : 2;
  close(fd);
  return rc;
}

#define FN(name) __attribute__((noinline, aligned(256))) int name(const char* path) { return note(path, #name ":" BUILD); }
#ifdef STALE_B
FN(other)
FN(stale_entry)
#else
FN(stale_entry)
FN(other)
#endif
