/* dfsahold N MS PATH: N rounds, one every MS ms. Every 10th round (0, 10, 20, ...) closes the
   file it holds and opens PATH.<round/10> (O_WRONLY|O_CREAT|O_APPEND); every round writes "K\n"
   through the fd it holds, so an fd stays open across several rounds (and across a move).
   Prints "done" at the end. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]), fd = -1;
    for (int i = 0; i < n; i++) {
        if (i % 10 == 0) {
            if (fd >= 0 && close(fd) != 0) return 3;
            char path[4096];
            snprintf(path, sizeof path, "%s.%d", argv[3], i / 10);
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd < 0) return 4;
        }
        char line[32];
        int len = snprintf(line, sizeof line, "%d\n", i);
        if (write(fd, line, (size_t)len) != len) return 5;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    if (close(fd) != 0) return 6;
    printf("done\n");
    return 0;
}
