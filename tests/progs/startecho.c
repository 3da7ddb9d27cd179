/* startecho: prints its pid, then each line of stdin numbered, until end of input; then the
   line count, and exits 5. The test holds it at a known point (waiting for input, which is at
   home) while it looks where the program runs. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    char line[256];
    int n = 0;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        printf("%d: %s", ++n, line);
        fflush(stdout);
    }
    printf("lines %d\n", n);
    return 5;
}
