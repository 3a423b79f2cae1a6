//! Criterion benches of the pure pipeline stages (filled in with the stages).
fn main() {}
