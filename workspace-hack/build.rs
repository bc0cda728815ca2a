//! Empty: it makes the build-dependencies in Cargo.toml (syn, for the proc macros) count.
fn main() {}
