//! The line of an instruction of a CPython code object, from its line
//! table (`co_linetable`): 3.10's (PEP 626: pairs of byte-offset delta and
//! line delta) and 3.11+'s location table (Objects/locations.md: entries
//! of a first byte, bit 7 set, holding the entry's kind and length in code
//! units, then varints). Python itself answers the same way
//! (`PyCode_Addr2Line`), so a frame reads the line `traceback` would show.

/// Which line table a code object has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTable {
    /// 3.10: (byte-offset delta u8, line delta i8; -128: no line) pairs.
    Pep626,
    /// 3.11+: the location table.
    Locations,
}

/// The line of the instruction at index `instr` (code units), from
/// `table` of a code object whose first line is `first`; None where the
/// table says the instruction has no line, or does not cover it.
pub fn line_at(kind: LineTable, table: &[u8], first: i32, instr: u32) -> Option<u32> {
    let addr = u64::from(instr) * 2;
    let line = match kind {
        LineTable::Pep626 => pep626(table, first, addr)?,
        LineTable::Locations => locations(table, first, addr)?,
    };
    u32::try_from(line).ok()
}

fn pep626(table: &[u8], first: i32, addr: u64) -> Option<i32> {
    let mut line = first;
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = if delta == -128 {
            None
        } else {
            line = line.wrapping_add(i32::from(delta));
            Some(line)
        };
        if end > addr {
            return here;
        }
    }
    None
}

/// Entry kinds of the location table (bits 3-6 of an entry's first byte).
const NO_LOCATION: u8 = 15;
const LONG: u8 = 14;
const NO_COLUMNS: u8 = 13;
const ONE_LINE0: u8 = 10;

fn locations(table: &[u8], first: i32, addr: u64) -> Option<i32> {
    let mut line = first;
    let mut start = 0u64;
    let mut i = 0;
    while i < table.len() {
        let b = table[i];
        let code = (b >> 3) & 15;
        let len = (u64::from(b & 7) + 1) * 2;
        let delta = match code {
            LONG | NO_COLUMNS => svarint(table.get(i + 1..)?)?,
            ONE_LINE0..=12 => i32::from(code - ONE_LINE0),
            _ => 0,
        };
        line = line.wrapping_add(delta);
        if start + len > addr {
            return (code != NO_LOCATION).then_some(line);
        }
        start += len;
        i += 1;
        while i < table.len() && table[i] & 0x80 == 0 {
            i += 1;
        }
    }
    None
}

/// A varint of 6-bit chunks, least significant first (bit 6: more).
fn varint(b: &[u8]) -> Option<u32> {
    let mut val = 0u32;
    for (k, &byte) in b.iter().enumerate().take(6) {
        val |= u32::from(byte & 63) << (6 * k);
        if byte & 64 == 0 {
            return Some(val);
        }
    }
    None
}

/// A signed varint: the sign in the lowest bit.
fn svarint(b: &[u8]) -> Option<i32> {
    let v = varint(b)?;
    let m = (v >> 1) as i32;
    Some(if v & 1 != 0 { -m } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tables of this function, from the interpreters themselves
    // (`co_linetable`, `co_firstlineno`, and the line of each instruction
    // as `co_lines()` / `dis` give it):
    //
    //   def f(n):          # line 1
    //       total = 0
    //       for i in range(n):
    //           total += i * i
    //       return total

    /// Checks every instruction: `lines[i]` is instruction i's line.
    fn check(kind: LineTable, table: &[u8], lines: &[u32]) {
        for (i, &line) in lines.iter().enumerate() {
            assert_eq!(line_at(kind, table, 1, i as u32), Some(line), "instr {i}");
        }
        assert_eq!(line_at(kind, table, 1, lines.len() as u32), None);
    }

    #[test]
    fn reads_3_10_tables() {
        // CPython 3.10.13.
        let table = [4, 1, 12, 1, 14, 1, 4, 1];
        let lines = [2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5];
        check(LineTable::Pep626, &table, &lines);
    }

    #[test]
    fn reads_3_12_and_3_13_tables() {
        // CPython 3.12.1, then 3.13.0.
        let table = [
            128, 0, 216, 12, 13, 128, 69, 220, 13, 18, 144, 49, 139, 88, 242, 0, 1, 5, 23, 136, 1,
            216, 8, 13, 144, 17, 144, 81, 145, 21, 137, 14, 137, 5, 240, 3, 1, 5, 23, 224, 11, 16,
            128, 76,
        ];
        let lines = [
            1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 5, 5,
        ];
        check(LineTable::Locations, &table, &lines);
        let table = [
            128, 0, 216, 12, 13, 128, 69, 220, 13, 18, 144, 49, 142, 88, 136, 1, 216, 8, 13, 144,
            81, 145, 21, 137, 14, 138, 5, 241, 3, 0, 14, 22, 224, 11, 16, 128, 76,
        ];
        let lines = [
            1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 5,
            5,
        ];
        check(LineTable::Locations, &table, &lines);
    }

    #[test]
    fn signed_varints() {
        assert_eq!(svarint(&[2]), Some(1));
        assert_eq!(svarint(&[3]), Some(-1));
        assert_eq!(svarint(&[64 | 4, 1]), Some(34));
        assert_eq!(svarint(&[64]), None);
    }
}
