/* Tiny ELF seed for the elf_symbols and usdt_notes fuzz targets: global,
 * static, weak and IFUNC functions, a GCC split fragment (.cold), USDT
 * probes with semaphores (names.cpp has some without). No libc
 * (-nostdlib): never run. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

int counter = 3;
#define SEMAPHORE(name) \
    __extension__ unsigned short demo_##name##_semaphore __attribute__((unused, section(".probes")))
SEMAPHORE(frame_done);
SEMAPHORE(global_arg);
SEMAPHORE(const_arg);
SEMAPHORE(frame_start);

__attribute__((noinline)) int stage_one(int x) { return x * 5; }
__attribute__((noinline)) static int stage_two(int x) { return x + 9; }
__attribute__((noinline, weak)) int weak_stage(int x) { return x - 1; }

__attribute__((noinline, cold)) static int rare(int x) { return x * x * 7; }
__attribute__((noinline)) int work(int x, long y) {
    if (__builtin_expect(x > 1000, 0)) x = rare(x) + (int)y;
    DTRACE_PROBE2(demo, frame_done, x, y);
    STAP_PROBE1(demo, global_arg, counter);
    STAP_PROBE1(demo, const_arg, 42);
    if (demo_frame_start_semaphore) STAP_PROBE1(demo, frame_start, x);
    return x + (int)y;
}

static int impl_a(int x) { return x; }
static int (*resolve_pick(void))(int) { return impl_a; }
int pick(int) __attribute__((ifunc("resolve_pick")));

void _start(void) {
    volatile int r = stage_one(1) + stage_two(2) + weak_stage(3) + work(4, 5) + pick(6);
    (void)r;
    for (;;) {}
}
