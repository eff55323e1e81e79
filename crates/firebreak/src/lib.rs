//! `firebreak`: reliable calls to the Fireworks AI inference API. This facade composes the layers; it is a skeleton until they land.

pub use firebreak_client as client;
