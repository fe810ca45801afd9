#![forbid(unsafe_code)]
pub mod auth;
pub mod digest;
pub mod http;
pub mod provision;
pub mod reference;
pub mod registry;
pub mod sources;
pub mod spec;
pub mod store;
pub mod unpack;
