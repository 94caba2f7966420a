/* Main thread spins in user code forever and never makes a system call while
 * spinning; it answers requests through a shared page: the test writes a
 * number to word 0 of the file named by argv[1], the target writes it + 1 to
 * word 1. Floating-point state is live across the spin (checked by the test:
 * the answer involves an accumulated double). Word 3 counts loop iterations,
 * so the test knows the target is in the loop (not still in its write). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDWR);
  if (fd < 0) return 3;
  volatile uint64_t* page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (page == MAP_FAILED) return 4;
  printf("ready %d\n", (int)getpid());
  fflush(stdout);
  double acc = 0.5;
  uint64_t last = 0;
  for (;;) {
    acc = acc * 1.0000001 + 1e-9; /* keeps an xmm register busy */
    page[3]++;
    uint64_t req = page[0];
    if (req != last) {
      last = req;
      page[2] = acc > 0.5 ? 1 : 0;
      page[1] = req + 1;
    }
  }
}
