//! `run --trace-out FILE`: spans in the Chrome trace-event format.
