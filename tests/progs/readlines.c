/* readlines: reads stdin with read(2) until its end and writes each line back to stdout as
   "N: LINE pid P" (P = getpid(), the home PID wherever it runs); then "end N lines" and exit 0.
   The output depends only on the input, not on how reads split it. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char buf[4096], line[4096];
    size_t have = 0;
    int n = 0;
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r < 0) return 3;
        if (r == 0) break;
        for (ssize_t i = 0; i < r; i++) {
            if (have < sizeof line - 1) line[have++] = buf[i];
            if (buf[i] == '\n') {
                line[have - 1] = 0;
                char out[4200];
                int len = snprintf(out, sizeof out, "%d: %s pid %d\n", ++n, line, (int)getpid());
                if (write(1, out, (size_t)len) != len) return 4;
                have = 0;
            }
        }
    }
    char out[64];
    int len = snprintf(out, sizeof out, "end %d lines\n", n);
    return write(1, out, (size_t)len) == len ? 0 : 5;
}
