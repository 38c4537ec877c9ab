//! Whether the kernel's x86-64 uprobes accept a function's first
//! instruction. The kernel (arch/x86/kernel/uprobes.c, `is_prefix_bad`)
//! refuses an instruction with a LOCK or an ES/CS/SS/DS segment prefix; the
//! refusal happens when the breakpoint is installed in a process, after the
//! attach call has succeeded, so the probe would silently never fire.

/// Why a uprobe at the start of `code` would never fire, if it would not.
pub fn uprobe_refusal(code: &[u8]) -> Option<&'static str> {
    for &byte in code.iter().take(15) {
        match byte {
            0xf0 => return Some("its first instruction has a LOCK prefix"),
            0x26 | 0x2e | 0x36 | 0x3e => {
                return Some("its first instruction has a segment-override prefix")
            }
            // Other legacy prefixes may precede them.
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x64 | 0x65 => continue,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_first_instructions() {
        for code in [
            &[0x55][..],                     // push %rbp
            &[0xf3, 0x0f, 0x1e, 0xfa],       // endbr64
            &[0x48, 0x89, 0xe5],             // mov %rsp,%rbp
            &[0x89, 0xf8],                   // mov %edi,%eax
            &[0x66, 0x90],                   // xchg %ax,%ax
            &[0x64, 0x48, 0x8b, 0x04, 0x25], // mov %fs:..,%rax
        ] {
            assert_eq!(uprobe_refusal(code), None, "{code:x?}");
        }
        assert_eq!(uprobe_refusal(&[]), None);
    }

    #[test]
    fn refuses_lock_and_segment_prefixes() {
        // lock addq $1, x(%rip)
        assert_eq!(
            uprobe_refusal(&[0xf0, 0x48, 0x83, 0x05, 0, 0, 0, 0, 1]),
            Some("its first instruction has a LOCK prefix")
        );
        // data16 lock (prefix order varies)
        assert_eq!(
            uprobe_refusal(&[0x66, 0xf0, 0xff, 0x07]),
            Some("its first instruction has a LOCK prefix")
        );
        assert_eq!(
            uprobe_refusal(&[0x2e, 0xff, 0xe0]),
            Some("its first instruction has a segment-override prefix")
        );
    }
}
