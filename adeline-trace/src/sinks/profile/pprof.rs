//! pprof protobuf: the messages of `perftools.profiles.Profile` (field
//! numbers as in google/pprof's proto/profile.proto, the format Parca,
//! Pyroscope, Grafana and `go tool pprof` read) as prost messages, and the
//! encoder of a [`Profile`]. Values per sample: `samples/count` and
//! `wall/microseconds` (on- and off-CPU time alike); labels `stage` and
//! `time` (`on-cpu`, `off-cpu`, `runqueue`). Every frame is a location
//! with one line; the stage and markers (`[off-cpu]`, ...) are frames as in
//! the folded output. Written uncompressed (pprof tools accept both).
use std::collections::HashMap;

use prost::Message;

use crate::metrics::profile::{
    names::{Frame, FrameKind},
    Profile, TimeKind,
};

#[derive(Clone, PartialEq, Message)]
pub struct PProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PSample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PSample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds the tables (strings, functions, locations) of one profile.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Frame, u64>,
}

impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn location(&mut self, f: &Frame) -> u64 {
        if let Some(&id) = self.location_ids.get(f) {
            return id;
        }
        let name = match f.kind {
            FrameKind::Kernel => format!("{} [kernel]", f.name),
            _ => f.name.clone(),
        };
        let fkey = (name.clone(), f.file.clone());
        let function_id = match self.function_ids.get(&fkey) {
            Some(&id) => id,
            None => {
                let id = self.functions.len() as u64 + 1;
                let name_id = self.string(&name);
                let file_id = match &f.file {
                    Some(file) => self.string(file),
                    None => 0,
                };
                self.functions.push(Function {
                    id,
                    name: name_id,
                    system_name: name_id,
                    filename: file_id,
                });
                self.function_ids.insert(fkey, id);
                id
            }
        };
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            line: vec![Line {
                function_id,
                line: f.line.map(i64::from).unwrap_or(0),
            }],
        });
        self.location_ids.insert(f.clone(), id);
        id
    }
}

fn time_label(kind: TimeKind) -> &'static str {
    match kind {
        TimeKind::OnCpu => "on-cpu",
        TimeKind::OffCpu => "off-cpu",
        TimeKind::Runqueue => "runqueue",
    }
}

/// The profile as a pprof message.
pub fn message(profile: &Profile, wall_start_ns: u64) -> PProfile {
    let mut t = Tables::default();
    t.string("");
    let sample_type = vec![
        ValueType {
            r#type: t.string("samples"),
            unit: t.string("count"),
        },
        ValueType {
            r#type: t.string("wall"),
            unit: t.string("microseconds"),
        },
    ];
    let (stage_key, time_key) = (t.string("stage"), t.string("time"));
    let mut samples = Vec::new();
    for s in &profile.stacks {
        let mut ids: Vec<u64> = s.frames.iter().map(|f| t.location(f)).collect();
        ids.reverse();
        let stage = s.frames.first().map(|f| f.name.as_str()).unwrap_or("");
        let stage = t.string(stage);
        let time = t.string(time_label(s.kind));
        samples.push(PSample {
            location_id: ids,
            value: vec![s.samples as i64, ((s.ns + 500) / 1000) as i64],
            label: vec![
                Label {
                    key: stage_key,
                    str: stage,
                    num: 0,
                },
                Label {
                    key: time_key,
                    str: time,
                    num: 0,
                },
            ],
        });
    }
    let period_type = Some(ValueType {
        r#type: t.string("wall"),
        unit: t.string("microseconds"),
    });
    let comment = vec![t.string("adeline-trace: on-CPU samples and off-CPU time, µs")];
    let duration = profile
        .range
        .map(|(a, b)| b.saturating_sub(a) as i64)
        .unwrap_or(0);
    PProfile {
        sample_type,
        sample: samples,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos: wall_start_ns as i64,
        duration_nanos: duration,
        period_type,
        period: (profile.period_ns / 1000) as i64,
        comment,
        default_sample_type: 1,
    }
}

/// The profile as pprof protobuf bytes.
pub fn encode(profile: &Profile, wall_start_ns: u64) -> Vec<u8> {
    message(profile, wall_start_ns).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_back() {
        let p = super::super::tests::sample_profile();
        let bytes = encode(&p, 1234);
        let back = PProfile::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.string_table[0], "");
        assert_eq!(back.sample.len(), 3);
        let s = &back.string_table;
        let name = |loc: u64| {
            let l = &back.location[loc as usize - 1];
            let f = &back.function[l.line[0].function_id as usize - 1];
            s[f.name as usize].clone()
        };
        // Leaf first: hot, main, infer.
        let hot = &back.sample[0];
        assert_eq!(
            hot.location_id.iter().map(|&l| name(l)).collect::<Vec<_>>(),
            ["hot", "main", "infer"]
        );
        assert_eq!(hot.value, vec![1, 70_000]);
        assert_eq!(back.time_nanos, 1234);
    }
}
