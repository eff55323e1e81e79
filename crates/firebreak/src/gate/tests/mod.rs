//! The shared state's rules, tested on the store directly.

mod props;
mod store;
