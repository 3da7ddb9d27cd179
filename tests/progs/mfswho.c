/* mfswho N MS PATH...: N rounds, one every MS ms; each round reads the first line of every
   PATH and prints "K: LINE" (K: the path's index) when it differs from the last round's, or
   "K: errno E" when the open fails. Output depends only on what the paths lead to. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4 || argc > 12) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    char last[12][128] = {{0}};
    for (int i = 0; i < n; i++) {
        for (int k = 3; k < argc; k++) {
            char buf[128] = {0};
            int fd = open(argv[k], O_RDONLY);
            if (fd < 0) {
                snprintf(buf, sizeof buf, "errno %d", errno);
            } else {
                ssize_t got = read(fd, buf, sizeof buf - 1);
                buf[got > 0 ? got : 0] = 0;
                char *nl = strchr(buf, '\n');
                if (nl) *nl = 0;
                close(fd);
            }
            if (strcmp(buf, last[k - 3]) != 0) {
                strcpy(last[k - 3], buf);
                char line[160];
                int len = snprintf(line, sizeof line, "%d: %s\n", k - 3, buf);
                if (write(1, line, (size_t)len) != len) return 3;
            }
        }
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return 0;
}
