//! Producers: where events enter a node. In-process through `Emitter`, over
//! HTTP through `POST /api/v1/emit`, and from AWX's channels_redis layer.
//! Every source ends in `fanout::Router::route`.

pub mod channels_redis;
pub mod http;
mod inproc;
pub(crate) mod redis;

pub use inproc::{EmitError, Emitter};
pub use redis::RedisError;
