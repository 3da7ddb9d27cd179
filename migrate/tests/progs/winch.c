/* Reports its terminal's size to a file when told the size changed (SIGWINCH), as a
   full-screen program asks for it to redraw; ends after the first report.
   usage: winch REPORTFILE (stdin a terminal) */
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

static volatile sig_atomic_t winch;
static void h(int s) { (void)s; winch = 1; }

int main(int argc, char **argv) {
    (void)argc;
    signal(SIGWINCH, h);
    FILE *f = fopen(argv[1], "w");
    struct winsize w;
    ioctl(0, TIOCGWINSZ, &w);
    fprintf(f, "started %d %d\n", w.ws_row, w.ws_col);
    fflush(f);
    for (int i = 0; i < 6000 && !winch; i++) usleep(5000);
    if (!winch) { fprintf(f, "BAD no SIGWINCH\n"); return 1; }
    ioctl(0, TIOCGWINSZ, &w);
    fprintf(f, "winch %d %d\n", w.ws_row, w.ws_col);
    return 0;
}
