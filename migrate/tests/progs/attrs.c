/* Memory and process attributes that a thaw must bring back exactly. usage: attrs DATAFILE
   Sets them up, prints "ready", then idles until SIGUSR1 (or 60 s): then it checks each one from
   the inside, prints one line per check and "DONE ok" (or "BAD ...").
   DATAFILE: at least 2 pages, opened read-write and mapped shared read-only. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG 4096
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static unsigned char *anon(int pages) {
    unsigned char *p = mmap(0, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { printf("BAD mmap\n"); exit(1); }
    memset(p, 7, pages * PG);
    return p;
}

int main(int argc, char **argv) {
    int bad = 0;
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc < 2) return 2;
    /* 1. shared /dev/zero mapping with contents, then read-only */
    int z = open("/dev/zero", O_RDWR);
    unsigned char *shz = mmap(0, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, z, 0);
    close(z);
    for (int k = 0; k < 2 * PG; k++) shz[k] = (k * 7) % 253;
    mprotect(shz, 2 * PG, PROT_READ);
    /* 2. shared file mapping, file open read-write, mapped read-only (may be made writable) */
    int df = open(argv[1], O_RDWR);
    unsigned char *shf = mmap(0, 2 * PG, PROT_READ, MAP_SHARED, df, 0);
    close(df);
    /* 3. madvise state, mlock, MAP_NORESERVE, each on its own mapping */
    madvise(anon(4), 4 * PG, MADV_DONTDUMP);
    madvise(anon(4), 4 * PG, MADV_DONTFORK);
    madvise(anon(4), 4 * PG, MADV_WIPEONFORK);
    madvise(anon(4), 4 * PG, MADV_HUGEPAGE);
    madvise(anon(4), 4 * PG, MADV_NOHUGEPAGE);
    madvise(anon(4), 4 * PG, MADV_SEQUENTIAL);
    madvise(anon(4), 4 * PG, MADV_RANDOM);
    mlock(anon(4), 4 * PG);
    unsigned char *lf = mmap(0, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mlock2(lf, 4 * PG, MLOCK_ONFAULT);
    lf[0] = 1;
    unsigned char *nr = mmap(0, 4 * PG, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    nr[PG] = 9;
    /* 4. a MAP_GROWSDOWN mapping with room below it (an inaccessible reservation further down) */
    unsigned char *res = mmap(0, 4 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(res + (1 << 20), 3 << 20);
    unsigned char *gd = mmap(res + (4 << 20) - 4 * PG, 4 * PG, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED, -1, 0);
    if (gd == MAP_FAILED) { printf("BAD growsdown mmap\n"); return 1; }
    gd[PG] = 0x33;
    /* 5. an O_PATH fd */
    int opath = open(argv[1], O_PATH);
    /* 6. process attributes */
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    FILE *o = fopen("/proc/self/oom_score_adj", "w");
    if (!o || fprintf(o, "123\n") < 0 || fclose(o) != 0) { printf("BAD oom_score_adj\n"); return 1; }
    personality(ADDR_NO_RANDOMIZE | UNAME26);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    for (int i = 0; i < 6000 && !go; i++) usleep(10000);

    /* checks from the inside */
    int sub = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0);
    printf("thp_disable=%d subreaper=%d personality=%#x\n", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), sub,
           personality(0xffffffff));
    o = fopen("/proc/self/oom_score_adj", "r");
    int adj = 0;
    if (!o || fscanf(o, "%d", &adj) != 1) bad++;
    if (o) fclose(o);
    printf("oom_score_adj=%d\n", adj);
    for (int k = 0; k < 2 * PG; k++)
        if (shz[k] != (k * 7) % 253) { printf("BAD shared zero page at %d\n", k); bad++; break; }
    /* the shared file mapping can still be made writable, and writes reach the file */
    int mp = mprotect(shf, 2 * PG, PROT_READ | PROT_WRITE);
    printf("mprotect shared file writable: %s\n", mp == 0 ? "ok" : "refused");
    if (mp == 0) shf[10] = 'W';
    /* below the grows-down mapping: it must grow, not fault */
    gd[-PG - 100] = 0x44;
    printf("grows down: %s\n", gd[-PG - 100] == 0x44 && gd[PG] == 0x33 ? "ok" : "BAD");
    int fl = fcntl(opath, F_GETFL);
    struct stat st;
    printf("O_PATH fd: %s\n",
           fl >= 0 && (fl & O_PATH) && fstat(opath, &st) == 0 && S_ISREG(st.st_mode) ? "ok" : "BAD");
    printf("lock-on-fault page: %d, noreserve page: %d\n", lf[0], nr[PG]);
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
