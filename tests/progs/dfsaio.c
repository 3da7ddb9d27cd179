/* dfsaio N MS IN OUT ESC...: N rounds, one every MS ms. Each round reads the first line of IN,
   appends "K: LINE\n" to OUT (open O_WRONLY|O_APPEND|O_CREAT, write, close), stats IN, reads
   the first line of every ESC path, and prints "K: LINE size S | ESC-LINE | ...\n". Output and
   OUT depend only on what the paths lead to, never on where the process runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void first_line(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(buf, len, "errno %d", errno);
        return;
    }
    ssize_t got = read(fd, buf, len - 1);
    buf[got > 0 ? got : 0] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        char in[128], line[1024];
        first_line(argv[3], in, sizeof in);
        int out = open(argv[4], O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (out < 0) return 3;
        int len = snprintf(line, sizeof line, "%d: %s\n", i, in);
        if (write(out, line, (size_t)len) != len) return 4;
        if (close(out) != 0) return 5;
        struct stat st;
        long size = stat(argv[3], &st) == 0 ? (long)st.st_size : -errno;
        len = snprintf(line, sizeof line, "%d: %s size %ld", i, in, size);
        for (int k = 5; k < argc; k++) {
            char esc[128];
            first_line(argv[k], esc, sizeof esc);
            len += snprintf(line + len, sizeof line - (size_t)len, " | %s", esc);
        }
        len += snprintf(line + len, sizeof line - (size_t)len, "\n");
        if (write(1, line, (size_t)len) != len) return 6;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return 0;
}
