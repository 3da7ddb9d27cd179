/* Holds a socket: freezing must be refused, the process must run on unaffected.  usage: sock ITERS */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return 2;
    for (int i = 0; i < n; i++) { printf("iter %d\n", i); usleep(10000); }
    printf("DONE ok\n");
    return 0;
}
