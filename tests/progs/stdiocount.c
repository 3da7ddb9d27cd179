/* stdiocount N: waits 0.8 s (time to be moved), then prints N numbered lines through stdio
   (whose first write to a pipe fstat()s stdout), 20 ms apart, and exits 5. */
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20;
    usleep(800000);
    for (int i = 0; i < n; i++) {
        printf("line %d of %d, pid %d\n", i, n, (int)getpid());
        fflush(stdout);
        usleep(20000);
    }
    return 5;
}
