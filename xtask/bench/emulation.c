/* Fixture for `cargo xtask bench emulation`: one tiny function per x86-64
 * instruction form, written in assembly so the probed instruction is exact.
 * The bench puts a tracefs uprobe (`p:`, and for some also `r:`) on the
 * instruction at a known offset inside the function and compares the CPU
 * time per call with and without it:
 *
 *     emulation FN N   ->   {"fn":"FN","calls":N,"ns_per_call":X}
 *
 * ns_per_call is this thread's CPU time (user + system, which includes the
 * uprobe traps taken on its behalf) divided by N, so other load on the
 * machine does not inflate it. Built by the bench with `gcc -O2`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FN(name, body)                                                                  \
    __asm__(".text\n.globl " #name "\n.type " #name ",@function\n.p2align 6\n" #name \
            ":\n" body "\n.size " #name ",.-" #name "\n");                             \
    int name(int);

FN(e_ret_target, "ret")
FN(e_endbr64, "endbr64\n ret")
FN(e_push_rbx, "push %rbx\n pop %rbx\n ret")
FN(e_push_rbp, "push %rbp\n pop %rbp\n ret")
FN(e_push_r12, "push %r12\n pop %r12\n ret")
FN(e_push_imm8, "push $1\n add $8,%rsp\n ret")
FN(e_push_imm32, ".byte 0x68; .long 0x1000\n add $8,%rsp\n ret")
FN(e_nop, "nop\n ret")
FN(e_xchg_ax_ax, ".byte 0x66,0x90\n ret")
FN(e_pause, "pause\n ret")
FN(e_nopl_rax, ".byte 0x0f,0x1f,0x00\n ret")
FN(e_nopl_0_rax, ".byte 0x0f,0x1f,0x40,0x00\n ret")
FN(e_nopl_0_rax_rax, ".byte 0x0f,0x1f,0x44,0x00,0x00\n ret")
FN(e_nopw_0_rax_rax, ".byte 0x66,0x0f,0x1f,0x44,0x00,0x00\n ret")
FN(e_nopl_0l_rax, ".byte 0x0f,0x1f,0x80,0,0,0,0\n ret")
FN(e_nopl_0l_rax_rax, ".byte 0x0f,0x1f,0x84,0,0,0,0,0\n ret")
FN(e_nopw_0l_rax_rax, ".byte 0x66,0x0f,0x1f,0x84,0,0,0,0,0\n ret")
FN(e_cs_nopw, ".byte 0x66,0x2e,0x0f,0x1f,0x84,0,0,0,0,0\n ret")
FN(e_nop_eax, ".byte 0x0f,0x1f,0xc0\n ret")
FN(e_jmp_rel8, ".byte 0xeb,0x00\n ret")
FN(e_jmp_rel32, ".byte 0xe9; .long 0\n ret")
FN(e_je_rel8, "test %edi,%edi\n .byte 0x74,0x00\n ret")
FN(e_je_rel32, "test %edi,%edi\n .byte 0x0f,0x84; .long 0\n ret")
FN(e_call_rel32, "call e_ret_target\n ret")
FN(e_ret, "ret")
FN(e_mov, "mov %edi,%eax\n ret")
FN(e_sub_rsp, "sub $8,%rsp\n add $8,%rsp\n ret")
FN(e_test, "test %edi,%edi\n ret")
FN(e_cmp, "cmp $1,%edi\n ret")
FN(e_lea, "lea 1(%rdi),%eax\n ret")

static const struct {
    const char *name;
    int (*fn)(int);
} FUNCTIONS[] = {
#define E(x) {#x, x},
    E(e_endbr64) E(e_push_rbx) E(e_push_rbp) E(e_push_r12) E(e_push_imm8) E(e_push_imm32)
    E(e_nop) E(e_xchg_ax_ax) E(e_pause) E(e_nopl_rax) E(e_nopl_0_rax) E(e_nopl_0_rax_rax)
    E(e_nopw_0_rax_rax) E(e_nopl_0l_rax) E(e_nopl_0l_rax_rax) E(e_nopw_0l_rax_rax)
    E(e_cs_nopw) E(e_nop_eax) E(e_jmp_rel8) E(e_jmp_rel32) E(e_je_rel8) E(e_je_rel32)
    E(e_call_rel32) E(e_ret) E(e_mov) E(e_sub_rsp) E(e_test) E(e_cmp) E(e_lea)
#undef E
};

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FUNCTION CALLS\n", argv[0]);
        return 2;
    }
    int (*volatile fn)(int) = NULL;
    for (size_t i = 0; i < sizeof FUNCTIONS / sizeof FUNCTIONS[0]; i++) {
        if (strcmp(FUNCTIONS[i].name, argv[1]) == 0) fn = FUNCTIONS[i].fn;
    }
    long calls = strtol(argv[2], NULL, 10);
    if (fn == NULL || calls <= 0) {
        fprintf(stderr, "unknown function %s or bad CALLS\n", argv[1]);
        return 2;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    volatile int sink = 0;
    for (long i = 0; i < calls; i++) sink = fn((int)i);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    (void)sink;
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / calls;
    printf("{\"fn\":\"%s\",\"calls\":%ld,\"ns_per_call\":%.1f}\n", argv[1], calls, ns);
    return 0;
}
