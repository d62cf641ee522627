//! Producers: where events enter a node. In-process through `Emitter`, and
//! over HTTP through `POST /api/v1/emit`. Every source ends in
//! `fanout::Router::route`.

pub mod http;
mod inproc;

pub use inproc::{EmitError, Emitter};
