/* pathopen N MS SECRET: N lines "line i", one every MS ms; at line N/2 it opens "rel.txt"
   (relative to its cwd) and SECRET (absolute), and prints what each gave: the first line of
   rel.txt, or the errno. Output depends only on the files and the caller's rights. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void show(const char *what, const char *path) {
    char buf[128], line[192];
    int fd = open(path, O_RDONLY);
    int len;
    if (fd < 0) {
        len = snprintf(line, sizeof line, "%s: errno %d\n", what, errno);
    } else {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        char *nl = strchr(buf, '\n');
        if (nl) *nl = 0;
        len = snprintf(line, sizeof line, "%s: read \"%s\"\n", what, buf);
        close(fd);
    }
    if (write(1, line, (size_t)len) != len) exit(3);
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        if (i == n / 2) {
            show("relative", "rel.txt");
            show("secret", argv[3]);
        }
        char line[64];
        int len = snprintf(line, sizeof line, "line %d\n", i);
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return 0;
}
