/* fdreuse DIR: fd numbers reused while away. Opens DIR/a at fd 3 and DIR/c at fd 4, then
   steps on each line read from stdin (the test moves it between the steps):
   line 1: closes 3 and 4, opens DIR/b (created, truncated): it gets fd 3 again;
   line 2: writes "via fd 3 pid P\n" to fd 3 and says whether fd 4 is open.
   Each step writes what it did to stdout; then "end" and exit 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int say(const char *s) { return write(1, s, strlen(s)) == (ssize_t)strlen(s) ? 0 : -1; }

static int line(void) {
    char c;
    for (;;) {
        ssize_t r = read(0, &c, 1);
        if (r <= 0) return -1;
        if (c == '\n') return 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    char a[4096], b[4096], c[4096], out[256];
    snprintf(a, sizeof a, "%s/a", argv[1]);
    snprintf(b, sizeof b, "%s/b", argv[1]);
    snprintf(c, sizeof c, "%s/c", argv[1]);
    int fa = open(a, O_RDWR);
    int fc = open(c, O_RDONLY);
    snprintf(out, sizeof out, "a at %d, c at %d\n", fa, fc);
    if (say(out)) return 3;
    if (line()) return 4;
    if (close(fa) || close(fc)) return 5;
    int fb = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    snprintf(out, sizeof out, "b at %d\n", fb);
    if (say(out)) return 6;
    if (line()) return 7;
    int len = snprintf(out, sizeof out, "via fd %d pid %d\n", fb, (int)getpid());
    if (write(fb, out, (size_t)len) != len) return 8;
    int open4 = fcntl(4, F_GETFD) >= 0;
    snprintf(out, sizeof out, "fd 4 %s\n", open4 ? "open" : (errno == EBADF ? "closed" : "?"));
    if (say(out)) return 9;
    return say("end\n") ? 10 : 0;
}
