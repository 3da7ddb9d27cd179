#!/usr/bin/env bash
# Migration benchmarks (BENCHMARKS.md, section "Migration"), each beside a baseline measured in
# the same run. Needs root (ptrace, seccomp of other processes), gcc, and a release build:
#
#   CARGO_TARGET_DIR=target cargo build --release -p omnode
#   sudo scripts/bench-migrate.sh [target/release/omnode]
#
# Starts two daemons on $ADDR and the next address (default 127.0.0.241/242; loopback, nothing
# leaves the machine), compiles small
# C programs into a temporary directory, and prints one line per measurement. Everything it
# starts is killed and the directory removed on exit. Environment:
#   SIZES="1 64 512"  heap sizes (MiB) of the moved process   REPS=3  repetitions per size
#   STARTS=50         mosrun / fork+exec repetitions          WRITES=20000  64-byte writes
#   PARTS="move start write cpu"  which measurements to run
#   FIRST_IP=127.0.0.241  node 1's address (node 2 gets the next one; ADDR= is the same)
#   LOG=...           the daemons' RUST_LOG (add omnode::phase=debug for the time of each phase)
#   KEEP=DIR          copy both daemons' logs to DIR/n1.log, DIR/n2.log at the end
set -euo pipefail

BIN=$(realpath "${1:-target/release/omnode}")
SIZES=${SIZES:-"1 64 512"}
REPS=${REPS:-3}
STARTS=${STARTS:-50}
WRITES=${WRITES:-20000}
PARTS=${PARTS:-"move start write cpu"}
FIRST_IP=${FIRST_IP:-${ADDR:-127.0.0.241}}
part() { [[ " $PARTS " == *" $1 "* ]]; }
[ -x "$BIN" ] || { echo "no omnode binary at $BIN (cargo build --release -p omnode)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (ptrace and seccomp filters of other processes)" >&2; exit 1; }

D=$(mktemp -d /tmp/bench-migrate.XXXXXX)
PIDS=()
LOG=${LOG:-warn,omnode::balancer=info,omnode::migrator=info,omnode::remote=info}
cleanup() {
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$D"/n[12].log "$KEEP"/ 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT

# --- programs -------------------------------------------------------------------------------
cat > "$D/heap.c" <<'EOF'
/* heap MIB: touches MIB MiB (every page different), writes "ready", then sleeps. */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
int main(int c, char **v) {
    size_t w = (size_t)atol(v[1]) << 17; uint64_t *h = malloc(w * 8), x = 88172645463325252ULL;
    for (size_t i = 0; i < w; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; h[i] = x; }
    if (write(1, "ready\n", 6) != 6) return 3;
    for (;;) pause();
}
EOF
cat > "$D/tcp.c" <<'EOF'
/* tcp bulk BYTES | tcp pingpong N: a raw TCP baseline over 127.0.0.1 (TCP_NODELAY), client and
   server in two processes. Prints seconds for the bulk transfer, or microseconds per round
   trip of a 64-byte message. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void full(int fd, char *b, size_t n) { while (n) { ssize_t r = read(fd, b, n); if (r <= 0) exit(5); b += r; n -= r; } }
int main(int c, char **v) {
    int bulk = strcmp(v[1], "bulk") == 0; long long n = atoll(v[2]);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (void *)&a, &al)) return 4;
    static char buf[1 << 20];
    pid_t p = fork();
    if (p == 0) {
        int s = accept(ls, 0, 0); setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (bulk) { long long got = 0; ssize_t r; while ((r = read(s, buf, sizeof buf)) > 0) got += r; if (write(s, "k", 1) != 1) return 6; return got != n; }
        for (long long i = 0; i < n; i++) { full(s, buf, 64); if (write(s, buf, 64) != 64) return 6; }
        return 0;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0); setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s, (void *)&a, sizeof a)) return 4;
    memset(buf, 7, sizeof buf);
    double t0 = now();
    if (bulk) {
        for (long long left = n; left > 0;) { ssize_t r = write(s, buf, left < (long long)sizeof buf ? left : (long long)sizeof buf); if (r <= 0) return 5; left -= r; }
        shutdown(s, SHUT_WR); full(s, buf, 1); printf("%.4f\n", now() - t0);
    } else {
        for (long long i = 0; i < n; i++) { if (write(s, buf, 64) != 64) return 5; full(s, buf, 64); }
        printf("%.2f\n", (now() - t0) / n * 1e6);
    }
    int st; waitpid(p, &st, 0); return WEXITSTATUS(st);
}
EOF
cat > "$D/wr.c" <<'EOF'
/* wr FILE N: opens FILE, writes "ready", sleeps 1.5 s (time to be moved), then N write(2)s of
   64 bytes to FILE; prints microseconds per write. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int c, char **v) {
    int fd = open(v[1], O_WRONLY | O_CREAT | O_TRUNC, 0600); long n = atol(v[2]); char b[64] = {0};
    if (fd < 0 || write(1, "ready\n", 6) != 6) return 3;
    struct timespec ts = { 1, 500000000 }; while (nanosleep(&ts, &ts)) {}
    double t0 = now();
    for (long i = 0; i < n; i++) if (write(fd, b, 64) != 64) return 4;
    char l[32]; int k = snprintf(l, sizeof l, "%.2f\n", (now() - t0) / n * 1e6);
    return write(1, l, k) != k;
}
EOF
cat > "$D/cpu.c" <<'EOF'
/* cpu N: N * 10^8 steps of a pure computation, no system call; writes the result.
   (Only write(2) in the moved programs: stdio's first fstat of stdout is a call a moved
   process cannot make yet.) */
#include <stdint.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
int main(int c, char **v) {
    long n = atol(v[1]); uint64_t x = 1;
    for (long i = 0; i < n * 100000000L; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    char l[32]; int k = snprintf(l, sizeof l, "%llu\n", (unsigned long long)(x & 0xffff));
    return write(1, l, k) != k;
}
EOF
for p in heap tcp wr cpu; do gcc -O2 -o "$D/$p" "$D/$p.c"; done
# a static /bin/true: no dynamic loader (compared with the dynamic /bin/true, whose loader maps
# the libraries it opened at home from the identical files on node 2)
echo 'int main(void) { return 0; }' > "$D/true.c"
gcc -O2 -static -o "$D/true-static" "$D/true.c"

# --- two nodes ------------------------------------------------------------------------------
printf '1 %s 2\n' "$FIRST_IP" > "$D/map"
"$BIN" keygen --out "$D/key" >/dev/null
PORT=$(( 20000 + RANDOM % 20000 ))
for n in 1 2; do
    RUST_LOG=$LOG "$BIN" --map "$D/map" --node $n --key-file "$D/key" --port $PORT \
        --socket "$D/n$n.sock" --load-tick-ms 1000 >"$D/n$n.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do
    "$BIN" status --json --socket "$D/n1.sock" 2>/dev/null | grep -q '"up":true.*"up":true' && break
    sleep 0.1
done
export OMNODE_SOCKET="$D/n1.sock"
ms() { date +%s%N; }
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) omnode: $BIN"

# --- move of a N MiB process ----------------------------------------------------------------
part move && for mib in $SIZES; do
    for r in $(seq "$REPS"); do
        rm -f "$D/heap.out"  # the last run's "ready" must not be seen
        "$D/heap" "$mib" > "$D/heap.out" & hp=$!; PIDS+=($hp)
        for _ in $(seq 600); do grep -q ready "$D/heap.out" 2>/dev/null && break; sleep 0.05; done
        t0=$(ms); said=$("$BIN" migrate $hp 2 2>&1) || { echo "move failed: $said"; exit 1; }; t1=$(ms)
        frozen=$(sed -n 's/.*frozen \([0-9.]*\) ms.*/\1/p' <<<"$said")
        raw=$("$D/tcp" bulk $(( mib * 1048576 )))
        printf 'move %4s MiB: total %8.1f ms  frozen %8s ms  | raw TCP same bytes %8.1f ms\n' \
            "$mib" "$(echo "($t1 - $t0) / 1000000" | bc -l)" "$frozen" "$(echo "$raw * 1000" | bc -l)"
        kill -9 $hp; wait $hp 2>/dev/null || true
        sleep 0.5
    done
done

# --- remote start ---------------------------------------------------------------------------
if part start; then
t0=$(ms); for _ in $(seq "$STARTS"); do /bin/true; done; t1=$(ms)
local_us=$(echo "($t1 - $t0) / 1000 / $STARTS" | bc -l)
fails=0
t0=$(ms); for _ in $(seq "$STARTS"); do "$BIN" run -j2 -- /bin/true || fails=$((fails + 1)); done; t1=$(ms)
mos_us=$(echo "($t1 - $t0) / 1000 / $STARTS" | bc -l)
moved=$(grep -c 'mosrun: process [0-9]* moved to node 2' "$D/n1.log" || true)
athome=$(grep -c 'mosrun: it runs here' "$D/n1.log" || true)
printf 'start: mosrun -j2 /bin/true %8.0f us | local fork+exec /bin/true %6.0f us | goal <= local + 5000 us | %s of %s moved, %s not moved (ended first, or refused), %s failed\n' \
    "$mos_us" "$local_us" "$moved" "$STARTS" "$athome" "$fails"
home=$(grep -c 'coming home' "$D/n1.log" || true)
mapped=$(grep -c 'home files mapped here' "$D/n2.log" || true)
nmapped=$(sed -n 's/.* \([0-9]*\) home files mapped here.*/\1/p' "$D/n2.log" | awk '{ s += $1; if ($1 > 0) k++ } END { printf "%d in %d of them", s, k }')
echo "start: of the $moved moved /bin/true (dynamically linked, moved at its exec stop), $home came home; $mapped ended on node 2, libraries mapped there from local files: $nmapped"
sed -n 's/.*mosrun: process [0-9]* moved to node 2 (image \([0-9.]*\) MiB, frozen \([0-9.]*\) ms).*/\1 \2/p' "$D/n1.log" \
    | sort -k2 -n | awk '{ if ($1 + 0 >= img + 0) img = $1; f[NR] = $2 } END { if (NR) printf "start: moves at the first instruction: image <= %s MiB, frozen min %s / median %s / max %s ms\n", img, f[1], f[int((NR + 1) / 2)], f[NR] }'
before=$(wc -l < "$D/n1.log")
t0=$(ms); for _ in $(seq "$STARTS"); do "$BIN" run -j2 -- "$D/true-static" || fails=$((fails + 1)); done; t1=$(ms)
st_us=$(echo "($t1 - $t0) / 1000 / $STARTS" | bc -l)
t0=$(ms); for _ in $(seq "$STARTS"); do "$D/true-static"; done; t1=$(ms)
stl_us=$(echo "($t1 - $t0) / 1000 / $STARTS" | bc -l)
smoved=$(tail -n +"$((before + 1))" "$D/n1.log" | grep -c 'mosrun: process [0-9]* moved to node 2' || true)
shome=$(tail -n +"$((before + 1))" "$D/n1.log" | grep -c 'coming home' || true)
printf 'start: mosrun -j2 true-static %8.0f us | local fork+exec true-static %6.0f us | goal <= local + 5000 us | %s of %s moved, %s came home, %s failed (both kinds)\n' \
    "$st_us" "$stl_us" "$smoved" "$STARTS" "$shome" "$fails"
fi

# --- forwarded 64-byte write ----------------------------------------------------------------
if part write; then
"$D/wr" "$D/f.local" "$WRITES" > "$D/wr.local"
"$D/wr" "$D/f.moved" "$WRITES" > "$D/wr.moved" & wp=$!; PIDS+=($wp)
for _ in $(seq 100); do grep -q ready "$D/wr.moved" 2>/dev/null && break; sleep 0.02; done
"$BIN" migrate $wp 2 >/dev/null
wait $wp
[ "$(stat -c %s "$D/f.moved")" = $(( WRITES * 64 )) ] || { echo "forwarded writes lost"; exit 1; }
pp=$("$D/tcp" pingpong "$WRITES")
printf 'write 64 B: forwarded %8s us | local %6s us | raw TCP ping-pong %6s us | goal <= 2x ping-pong\n' \
    "$(tail -1 "$D/wr.moved")" "$(tail -1 "$D/wr.local")" "$pp"
fi

# --- CPU-bound job moved once ---------------------------------------------------------------
part cpu && for r in $(seq "$REPS"); do
    t0=$(ms); "$D/cpu" 40 > "$D/cpu.a"; t1=$(ms)
    plain=$(echo "($t1 - $t0) / 1000000" | bc -l)
    t0=$(ms); "$D/cpu" 40 > "$D/cpu.b" & cp=$!; PIDS+=($cp)
    sleep 0.5; "$BIN" migrate $cp 2 >/dev/null; wait $cp; t1=$(ms)
    moved=$(echo "($t1 - $t0) / 1000000" | bc -l)
    cmp -s "$D/cpu.a" "$D/cpu.b" || { echo "cpu job output differs"; exit 1; }
    printf 'cpu job: moved once %8.1f ms | unmoved %8.1f ms | %+5.1f %% | goal within 2 %%\n' \
        "$moved" "$plain" "$(echo "($moved - $plain) * 100 / $plain" | bc -l)"
done
