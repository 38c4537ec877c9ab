/* Fixture for `cargo xtask bench overhead`: calls one empty function N times
 * through a volatile function pointer and prints the time per call, measured
 * by the process itself:
 *
 *     overhead FN N   ->   {"fn":"FN","calls":N,"ns_per_call":X,"cpu_ns":C}
 *
 * cpu_ns is the process's own CPU time (user + system, which includes the
 * uprobe traps and BPF programs run on its behalf), so the bench can tell the
 * tracer's own CPU apart from the traced process's.
 *
 * `bench_push` and `bench_mov` are written in assembly so their first
 * instruction is exact: the kernel emulates `push %rbp` at a uprobe but
 * single-steps a `mov` (one more trap per call). The `cet_*` functions are C,
 * built the way Ubuntu and Fedora build everything (`-fcf-protection=full`):
 * they start with `endbr64`, which the kernel single-steps, followed by
 *   cet_push      push %rbx
 *   cet_test_je   test %rdi,%rdi; je
 *   cet_mov_push  mov (a global); push %rbx
 * Built by the bench with `gcc -O2 -fcf-protection=full` (the assembly
 * functions get no `endbr64`). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

__asm__(".text\n"
        ".globl bench_push\n"
        ".type bench_push, @function\n"
        ".p2align 4\n"
        "bench_push:\n"
        "    push %rbp\n"
        "    mov %rsp, %rbp\n"
        "    mov %edi, %eax\n"
        "    pop %rbp\n"
        "    ret\n"
        ".size bench_push, .-bench_push\n"
        ".globl bench_mov\n"
        ".type bench_mov, @function\n"
        ".p2align 4\n"
        "bench_mov:\n"
        "    mov %edi, %eax\n"
        "    ret\n"
        ".size bench_mov, .-bench_mov\n");

int bench_push(int);
int bench_mov(int);

#define NOINLINE __attribute__((noinline, noipa))
volatile char g_flag = 1;

NOINLINE int bench_leaf(int x) { return x + 1; }
NOINLINE int cet_push(int x) { return bench_leaf(x) + x; }
NOINLINE int cet_test_je(int x) {
    if (!x) return 0;
    return bench_leaf(x) + 1;
}
NOINLINE int cet_mov_push(int x) {
    int r;
    if (g_flag)
        r = bench_leaf(x);
    else
        r = bench_leaf(x + 1);
    return r + x;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s bench_push|bench_mov|cet_push|cet_test_je|cet_mov_push CALLS\n", argv[0]);
        return 2;
    }
    int (*volatile fn)(int);
    if (strcmp(argv[1], "bench_push") == 0) {
        fn = bench_push;
    } else if (strcmp(argv[1], "bench_mov") == 0) {
        fn = bench_mov;
    } else if (strcmp(argv[1], "cet_push") == 0) {
        fn = cet_push;
    } else if (strcmp(argv[1], "cet_test_je") == 0) {
        fn = cet_test_je;
    } else if (strcmp(argv[1], "cet_mov_push") == 0) {
        fn = cet_mov_push;
    } else {
        fprintf(stderr, "unknown function %s\n", argv[1]);
        return 2;
    }
    long calls = strtol(argv[2], NULL, 10);
    if (calls <= 0) {
        fprintf(stderr, "CALLS must be a positive integer\n");
        return 2;
    }
    volatile int sink = 0;
    double t0 = now_ns();
    for (long i = 0; i < calls; i++) {
        sink = fn((int)i);
    }
    double t1 = now_ns();
    (void)sink;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long long cpu_ns = ((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
                       ((long long)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
    printf("{\"fn\":\"%s\",\"calls\":%ld,\"ns_per_call\":%.1f,\"cpu_ns\":%lld}\n", argv[1],
           calls, (t1 - t0) / (double)calls, cpu_ns);
    return 0;
}
