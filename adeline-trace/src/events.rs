//! Ring-buffer records -> typed events. The one decoder of the wire format
//! shared with the kernel (adeline-trace-common: the agent embeds the kernel
//! programs it was built with, so both sides always have the same layout),
//! and the version of the JSON event schema the sinks write.
use adeline_trace_common::{GaugeRecord, MapRecord, SpanRecord, KIND_GAUGE, KIND_MAP, KIND_SPAN};
use thiserror::Error;

/// Version of the JSON event schema (docs/events.md): the `v` of every
/// JSON Lines object, and of the alert JSON `exec` hooks read.
pub const SCHEMA_VERSION: u32 = 1;

/// A decoded kernel record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Span(SpanRecord),
    Gauge(GaugeRecord),
    Map(MapRecord),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    let kind = buf
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()))
        .ok_or(DecodeError::Short {
            kind: 0,
            len: buf.len(),
        })?;
    match kind {
        KIND_SPAN => read::<SpanRecord>(kind, buf).map(Event::Span),
        KIND_GAUGE => read::<GaugeRecord>(kind, buf).map(Event::Gauge),
        KIND_MAP => read::<MapRecord>(kind, buf).map(Event::Map),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn read<T: Copy>(kind: u32, buf: &[u8]) -> Result<T, DecodeError> {
    if buf.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-old-data record.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Converts kernel CLOCK_MONOTONIC timestamps (bpf_ktime_get_ns) to wall
/// clock nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Current CLOCK_MONOTONIC in nanoseconds (the kernel programs' clock).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

impl WallClock {
    /// Measures the offset between the two clocks (best of a few reads).
    pub fn new() -> WallClock {
        let mut best = (i128::MAX, 0i128);
        for _ in 0..5 {
            let a = clock_ns(libc::CLOCK_MONOTONIC);
            let wall = clock_ns(libc::CLOCK_REALTIME);
            let b = clock_ns(libc::CLOCK_MONOTONIC);
            if b - a < best.0 {
                best = (b - a, wall - (a + b) / 2);
            }
        }
        WallClock { offset_ns: best.1 }
    }

    /// Wall-clock nanoseconds for a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset_ns).max(0) as u64
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_span_record() {
        let rec = SpanRecord {
            kind: KIND_SPAN,
            stage: 3,
            pid: 10,
            tid: 11,
            start_ns: 123,
            dur_ns: 456,
            self_ns: 400,
            frame_ns: 100,
            depth: 2,
            flags: 0,
        };
        assert_eq!(decode(&bytes(&rec)), Ok(Event::Span(rec)));
        let g = GaugeRecord {
            kind: KIND_GAUGE,
            gauge: 1,
            pid: 2,
            tid: 3,
            ts_ns: 4,
            value: -5,
        };
        assert_eq!(decode(&bytes(&g)), Ok(Event::Gauge(g)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let rec = SpanRecord {
            kind: KIND_SPAN,
            ..Default::default()
        };
        let b = bytes(&rec);
        assert_eq!(
            decode(&b[..20]),
            Err(DecodeError::Short {
                kind: KIND_SPAN,
                len: 20
            })
        );
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        let g = bytes(&GaugeRecord {
            kind: KIND_GAUGE,
            ..Default::default()
        });
        assert_eq!(
            decode(&g[..31]),
            Err(DecodeError::Short {
                kind: KIND_GAUGE,
                len: 31
            })
        );
        assert_eq!(decode(&[1]), Err(DecodeError::Short { kind: 0, len: 1 }));
    }

    /// The seeds of the event_decode fuzz target (written by
    /// fuzz/seeds/src/events.py: a length byte, then a record) are records
    /// of this layout: all decode, but for the two broken ones of `odd`.
    #[test]
    fn fuzz_seeds_are_records_of_this_layout() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/event_decode");
        for (name, bad) in [
            ("one_frame", 0),
            ("frames_2s", 0),
            ("memory", 0),
            ("odd", 2),
        ] {
            let data = std::fs::read(dir.join(name)).unwrap();
            let mut rest = &data[..];
            let (mut ok, mut errors) = (0, 0);
            while let Some((&len, tail)) = rest.split_first() {
                let (item, next) = tail.split_at(len as usize);
                rest = next;
                match decode(item) {
                    Ok(_) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            assert_eq!(errors, bad, "{name}");
            assert!(ok >= 4, "{name}: {ok} records");
        }
    }

    #[test]
    fn wall_clock_tracks_realtime() {
        let clock = WallClock::new();
        let wall = clock.wall_ns(monotonic_ns()) as i128;
        let now = clock_ns(libc::CLOCK_REALTIME);
        assert!((now - wall).abs() < 5_000_000, "{now} vs {wall}");
    }
}
