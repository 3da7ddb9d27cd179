/* A second thread that waits in pause() for ever while the main thread prints.  usage: thread ITERS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void *worker(void *a) { (void)a; for (;;) pause(); return 0; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    pthread_t t; pthread_create(&t, 0, worker, 0);
    for (int i = 0; i < n; i++) { printf("iter %d\n", i); usleep(10000); }
    printf("DONE ok\n");
    return 0;
}
