/* Private file mapping with changed pages, a MAP_SHARED anonymous page, and a brk heap that keeps
   growing after thaw; all verified every iteration.  usage: mapping DATAFILE ITERS
   DATAFILE: 16 pages, byte k of page p is (p*31 + k) & 0xff. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096
static unsigned char *chunks[1000];

int main(int argc, char **argv) {
    int n = atoi(argv[2]), bad = 0;
    int fd = open(argv[1], O_RDONLY);
    unsigned char *m = mmap(0, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    memset(m + 1 * PG, 'X', PG);
    memset(m + 5 * PG + 100, 'Y', 10);
    unsigned char *sh = mmap(0, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int k = 0; k < 2 * PG; k++) sh[k] = k % 251;
    /* an anonymous page with contents, then made inaccessible (PROT_NONE) */
    unsigned char *hid = mmap(0, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(hid + PG, 0x5a, PG);
    mprotect(hid, 3 * PG, PROT_NONE);
    for (int i = 0; i < n && i < 1000; i++) {
        chunks[i] = sbrk(3 * PG);
        if (chunks[i] == (void *)-1) { printf("BAD sbrk at %d\n", i); bad++; break; }
        memset(chunks[i], i & 0xff, 3 * PG);
        for (int j = 0; j <= i; j++)
            if (chunks[j][0] != (j & 0xff) || chunks[j][3 * PG - 1] != (j & 0xff)) { printf("BAD brk chunk %d at %d\n", j, i); bad++; }
        for (int p = 0; p < 16; p++)
            for (int k = 0; k < PG; k += 97) {
                unsigned char want = (p * 31 + k) & 0xff;
                if (p == 1) want = 'X';
                if (p == 5 && k >= 100 && k < 110) want = 'Y';
                if (m[p * PG + k] != want) { printf("BAD private map page %d at %d\n", p, i); bad++; p = 16; break; }
            }
        for (int k = 0; k < 2 * PG; k += 13)
            if (sh[k] != k % 251) { printf("BAD shared page at %d\n", i); bad++; break; }
        mprotect(hid, 3 * PG, PROT_READ);
        if (hid[PG] != 0x5a || hid[2 * PG - 1] != 0x5a || hid[0] != 0) { printf("BAD hidden page at %d\n", i); bad++; }
        mprotect(hid, 3 * PG, PROT_NONE);
        printf("iter %d\n", i);
        usleep(10000);
    }
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
