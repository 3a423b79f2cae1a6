//! The `sipadmit` binary.

fn main() {}
