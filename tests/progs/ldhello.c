/* ldhello: a dynamically linked program (built without -static) whose dynamic loader is the
   part under test: it prints one line through stdio naming its pid and its argument, and
   exits 7. The test moves it as soon as its exec is seen, i.e. while ld.so still loads libc. */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    printf("hello %s from pid %d\n", argc > 1 ? argv[1] : "-", (int)getpid());
    fflush(stdout);
    usleep(100000);
    printf("bye\n");
    return 7;
}
