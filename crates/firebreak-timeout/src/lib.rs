//! Part of [firebreak](https://example.invalid/firebreak). This crate is a skeleton: its layer is
//! tracked by its own issue and is not implemented yet.
