/* Single thread blocked in read(2). Also used statically linked (target_static). */
#include "target_common.h"
int main(void) {
  announce_ready();
  echo_loop();
  return 0;
}
