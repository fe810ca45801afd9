#![forbid(unsafe_code)]
pub mod auth;
pub mod digest;
pub mod http;
pub mod reference;
pub mod registry;
pub mod spec;
pub mod unpack;
