/* Fixture for `cargo xtask bench memory` and `cargo xtask bench alloc`:
 * allocation-heavy work that reports its own elapsed time, measured by the
 * process itself around its loop.
 *
 *     alloc_heavy churn N   ->   {"mode":"churn","iterations":N,"ns_per_iter":X,
 *                                  "cpu_ns":C,"minflt":F}
 *         N calls of iteration(): 64 small blocks of 16..4096 bytes (written,
 *         kept in a ring of 1024 live blocks, each freed when its slot is
 *         reused), one 192 KiB block from the top of the heap (brk grows, the
 *         pages are touched, free trims the heap: brk shrinks) and one 1 MiB
 *         block that malloc serves with mmap (every page touched, free =
 *         munmap). So each iteration makes page faults, mmap/munmap and brk
 *         calls, and ~66 malloc/free pairs.
 *
 *     alloc_heavy pairs N   ->   {"mode":"pairs","calls":N,"ns_per_pair":X,"cpu_ns":C,
 *                                  "minflt":F}
 *         one call of malloc_free_loop(N): N times malloc(64) + free.
 *
 *     alloc_heavy faults N  ->   {"mode":"faults","rounds":N,"ns_per_fault":X,...}
 *         N calls of fault_round(): mmap 64 MiB (no huge pages), write one
 *         byte in each of its 16384 pages (one minor fault each), munmap.
 *         The cost of what runs on every page fault (kmem:rss_stat).
 *
 * The mmap threshold and the trim threshold are fixed with mallopt (glibc
 * otherwise raises them after the first free of an mmapped block, and the
 * 1 MiB block would come from the heap). cpu_ns is the process's own CPU
 * time (user + system, which includes the uprobe traps and BPF programs run
 * on its behalf); minflt its minor page faults. Built by the bench with
 * `gcc -O2`. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define RING 1024
#define SMALL_PER_ITER 64
#define MEDIUM_BYTES (192 * 1024)
#define LARGE_BYTES (1024 * 1024)
#define PAGE 4096

static void *ring[RING];
static unsigned ring_next;
static unsigned rng = 12345;
static volatile unsigned long sink;

static unsigned next_rand(void) {
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* Writes every page of a block and reads one byte back. */
static void touch(unsigned char *p, size_t n) {
    for (size_t off = 0; off < n; off += PAGE) {
        p[off] = (unsigned char)off;
    }
    sink += p[n / 2];
}

/* One unit of allocation-heavy work; the stage the agent attaches to. */
__attribute__((noinline)) void iteration(void) {
    for (int i = 0; i < SMALL_PER_ITER; i++) {
        size_t size = 16 + next_rand() % (4096 - 16 + 1);
        unsigned char *p = malloc(size);
        if (p == NULL) {
            abort();
        }
        memset(p, (int)i, size);
        free(ring[ring_next]);
        ring[ring_next] = p;
        ring_next = (ring_next + 1) % RING;
        sink += p[size - 1];
    }
    unsigned char *medium = malloc(MEDIUM_BYTES);
    unsigned char *large = malloc(LARGE_BYTES);
    if (medium == NULL || large == NULL) {
        abort();
    }
    touch(medium, MEDIUM_BYTES);
    touch(large, LARGE_BYTES);
    free(large);
    free(medium);
}

/* N malloc(64) + free pairs; the pointer escapes so neither call is removed. */
__attribute__((noinline)) void malloc_free_loop(long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

#define FAULT_BYTES (64UL << 20)
#define PAGE 4096UL

/* One round of page faults: 16384 fresh pages written, then unmapped. */
__attribute__((noinline)) void fault_round(void) {
    unsigned char *p = mmap(NULL, FAULT_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    madvise(p, FAULT_BYTES, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < FAULT_BYTES; i += PAGE) {
        p[i] = 1;
    }
    munmap(p, FAULT_BYTES);
}

static double clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

/* CPU time of this (single-threaded) process, user + system: what the
   tracer's kernel work adds to it, without the VM's steal and wait time. */
static double cpu_now_ns(void) { return clock_ns(CLOCK_PROCESS_CPUTIME_ID); }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s churn|pairs|faults N\n", argv[0]);
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    if (n <= 0) {
        fprintf(stderr, "N must be a positive integer\n");
        return 2;
    }
    int churn = strcmp(argv[1], "churn") == 0;
    int faults = strcmp(argv[1], "faults") == 0;
    if (!churn && !faults && strcmp(argv[1], "pairs") != 0) {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    /* Fixed thresholds: mmap from 256 KiB up, trim the heap above 128 KiB free. */
    if (!mallopt(M_MMAP_THRESHOLD, 256 * 1024) || !mallopt(M_TRIM_THRESHOLD, 128 * 1024)) {
        fprintf(stderr, "mallopt failed\n");
        return 1;
    }
    double c0 = cpu_now_ns();
    double t0 = now_ns();
    if (churn) {
        for (long i = 0; i < n; i++) {
            iteration();
        }
    } else if (faults) {
        for (long i = 0; i < n; i++) {
            fault_round();
        }
    } else {
        malloc_free_loop(n);
    }
    double t1 = now_ns();
    double c1 = cpu_now_ns();
    for (int i = 0; i < RING; i++) {
        free(ring[i]);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long long cpu_ns = ((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
                       ((long long)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
    if (faults) {
        double per = (double)n * (double)(FAULT_BYTES / PAGE);
        printf("{\"mode\":\"faults\",\"rounds\":%ld,\"ns_per_fault\":%.1f,"
               "\"cpu_ns_per_fault\":%.1f,\"cpu_ns\":%lld,\"minflt\":%ld}\n",
               n, (t1 - t0) / per, (c1 - c0) / per, cpu_ns, ru.ru_minflt);
    } else if (churn) {
        printf("{\"mode\":\"churn\",\"iterations\":%ld,\"ns_per_iter\":%.1f,"
               "\"cpu_ns_per_iter\":%.1f,\"cpu_ns\":%lld,\"minflt\":%ld}\n",
               n, (t1 - t0) / (double)n, (c1 - c0) / (double)n, cpu_ns, ru.ru_minflt);
    } else {
        printf("{\"mode\":\"pairs\",\"calls\":%ld,\"ns_per_pair\":%.1f,"
               "\"cpu_ns_per_pair\":%.1f,\"cpu_ns\":%lld,\"minflt\":%ld}\n",
               n, (t1 - t0) / (double)n, (c1 - c0) / (double)n, cpu_ns, ru.ru_minflt);
    }
    return 0;
}
