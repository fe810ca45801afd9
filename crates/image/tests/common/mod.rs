//! Test support: the registry fixture and counting proxy ([`fixture`], shared with the agora
//! crate's end-to-end tests) and a layer builder ([`layers`]).
#![allow(dead_code)]

pub mod fixture;
pub mod layers;

#[allow(unused_imports)]
pub use fixture::*;
