//! No code: see Cargo.toml. Its dependencies unify the features of those the binaries share.
