/* ttyecho WAIT_MS [ign]: with "ign", ignores SIGTTIN first (a background read then fails with
   EIO instead of stopping it). Prints its pid, waits WAIT_MS (the test moves it meanwhile), then whether
   stdin is a terminal and the terminal's size, then echoes every line it reads from the
   terminal as "got: LINE" until "quit". */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int ms = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2 && !strcmp(argv[2], "ign")) signal(SIGTTIN, SIG_IGN);
    printf("pid %d\n", getpid());
    fflush(stdout);
    for (int i = 0; i < ms / 10; i++) {
        struct timespec ts = { 0, 10000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    struct winsize ws = {0};
    struct termios t;
    printf("isatty %d tcgetattr %d\n", isatty(0), tcgetattr(0, &t));
    if (ioctl(0, TIOCGWINSZ, &ws) == 0) printf("winsize %d %d\n", ws.ws_row, ws.ws_col);
    else printf("winsize failed\n");
    fflush(stdout);
    char line[256];
    errno = 0;
    while (fgets(line, sizeof line, stdin)) {
        printf("got: %s", line);
        fflush(stdout);
        if (!strcmp(line, "quit\n")) break;
    }
    if (ferror(stdin)) printf("got: read error errno %d\n", errno);
    printf("done pgrp-is-fg %d\n", tcgetpgrp(0) == getpgrp());
    return 0;
}
