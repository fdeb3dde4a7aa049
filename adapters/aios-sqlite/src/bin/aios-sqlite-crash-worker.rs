//! Placeholder, replaced by the crash worker.
fn main() {}
