//! Producers: where events enter a node. In-process through `Emitter`, over
//! HTTP through `POST /api/v1/emit`, from AWX's channels_redis layer, and
//! from wsrelay's native Redis Stream.
//! Every source ends in `fanout::Router::route`.

pub mod channels_redis;
pub mod http;
mod inproc;
pub(crate) mod redis;
pub mod stream;

pub use inproc::{EmitError, Emitter};
pub use redis::RedisError;
