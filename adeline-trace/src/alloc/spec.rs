//! The options of alloc mode, from flags or the `[alloc]` table of a config.
use std::time::Duration;

use serde::Deserialize;

use crate::{
    config::{parse_duration, ConfigError},
    units::parse_size,
};

/// Alloc mode options (present = `--alloc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocSpec {
    /// Allocations smaller than this are not tracked (in the kernel).
    pub min_bytes: u64,
    /// Track one allocation in this many, chosen at random (1 = all).
    pub sample: u32,
    /// Allocation sites report only allocations at least this old.
    pub min_age: Duration,
    /// How many sites to report.
    pub top: usize,
}

pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(1);
pub const DEFAULT_TOP: usize = 10;

/// The `[alloc]` table of a config file (its presence turns alloc mode on).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlloc {
    min_bytes: Option<String>,
    sample: Option<u32>,
    min_age: Option<String>,
    top: Option<usize>,
}

/// Flag values (None = not given).
#[derive(Debug, Default)]
pub struct AllocFlags<'a> {
    pub on: bool,
    pub min_bytes: Option<&'a str>,
    pub sample: Option<u32>,
    pub min_age: Option<&'a str>,
    pub top: Option<usize>,
}

impl AllocSpec {
    /// Flags override the file; None when neither turns alloc mode on.
    pub fn from_parts(
        flags: AllocFlags<'_>,
        file: Option<FileAlloc>,
    ) -> Result<Option<AllocSpec>, ConfigError> {
        if !flags.on && file.is_none() {
            return Ok(None);
        }
        let file = file.unwrap_or_default();
        let min_bytes = match flags.min_bytes.or(file.min_bytes.as_deref()) {
            None => 0,
            Some(text) => parse_size(text).map_err(|reason| ConfigError::Size {
                what: "--alloc-min-bytes",
                value: text.to_string(),
                reason,
            })?,
        };
        let sample = flags.sample.or(file.sample).unwrap_or(1);
        if sample == 0 {
            return Err(ConfigError::AllocSample);
        }
        let min_age = match flags.min_age.or(file.min_age.as_deref()) {
            None => DEFAULT_MIN_AGE,
            Some(text) => parse_duration("--min-age", text)?,
        };
        let top = flags.top.or(file.top).unwrap_or(DEFAULT_TOP);
        Ok(Some(AllocSpec {
            min_bytes,
            sample,
            min_age,
            top,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_apply() {
        assert_eq!(AllocSpec::from_parts(AllocFlags::default(), None), Ok(None));
        let file = FileAlloc {
            min_bytes: Some("1KiB".into()),
            sample: Some(4),
            min_age: None,
            top: Some(3),
        };
        let flags = AllocFlags {
            sample: Some(10),
            ..AllocFlags::default()
        };
        let spec = AllocSpec::from_parts(flags, Some(file)).unwrap().unwrap();
        assert_eq!(
            spec,
            AllocSpec {
                min_bytes: 1024,
                sample: 10,
                min_age: DEFAULT_MIN_AGE,
                top: 3
            }
        );
        let zero = AllocFlags {
            on: true,
            sample: Some(0),
            ..AllocFlags::default()
        };
        assert_eq!(
            AllocSpec::from_parts(zero, None),
            Err(ConfigError::AllocSample)
        );
    }
}
