//! Authentication benchmarks (filled in with the JWT work).
fn main() {}
