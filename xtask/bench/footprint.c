/* Steady load on many stages for `cargo xtask bench footprint`.
 *
 *   footprint N SECONDS RATE
 *
 * calls fn000 .. fn(N-1) round-robin (N <= 500) at about RATE calls a
 * second in all for SECONDS seconds, each call spinning a few hundred ns
 * to a few us (durations spread over several octaves), then prints
 * {"fixture":"footprint","calls":C}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

#define F(n)                                                                  \
    __attribute__((noipa, noinline)) void fn##n(unsigned spin) {              \
        for (unsigned i = 0; i < spin; i++)                                   \
            sink += i ^ 0x##n;                                                \
    }
#define F10(p) F(p##0) F(p##1) F(p##2) F(p##3) F(p##4) F(p##5) F(p##6) F(p##7) F(p##8) F(p##9)
#define F100(p) F10(p##0) F10(p##1) F10(p##2) F10(p##3) F10(p##4) F10(p##5) F10(p##6) F10(p##7) F10(p##8) F10(p##9)
F100(0) F100(1) F100(2) F100(3) F100(4)

#define P(n) fn##n,
#define P10(p) P(p##0) P(p##1) P(p##2) P(p##3) P(p##4) P(p##5) P(p##6) P(p##7) P(p##8) P(p##9)
#define P100(p) P10(p##0) P10(p##1) P10(p##2) P10(p##3) P10(p##4) P10(p##5) P10(p##6) P10(p##7) P10(p##8) P10(p##9)
static void (*const fns[500])(unsigned) = {P100(0) P100(1) P100(2) P100(3) P100(4)};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: footprint N SECONDS RATE\n");
        return 2;
    }
    int n = atoi(argv[1]);
    double seconds = atof(argv[2]), rate = atof(argv[3]);
    if (n < 1 || n > 500 || rate <= 0) {
        fprintf(stderr, "footprint: N must be 1..500 and RATE > 0\n");
        return 2;
    }
    double start = now(), end = start + seconds;
    unsigned long calls = 0;
    /* Batches of 1 ms worth of calls, then sleep to the schedule. */
    unsigned batch = rate / 1000 > 1 ? (unsigned)(rate / 1000) : 1;
    while (now() < end) {
        for (unsigned b = 0; b < batch; b++, calls++)
            fns[calls % n](100 + (calls * 7919) % 4000);
        double due = start + calls / rate, t = now();
        if (due > t) {
            struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
            nanosleep(&d, NULL);
        }
    }
    printf("{\"fixture\":\"footprint\",\"calls\":%lu}\n", calls);
    return 0;
}
