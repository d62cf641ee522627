//! Wire formats: websocket frames, HTTP request heads, the AWX client
//! protocol and the emit body. No sockets and no clock here; drivers pass
//! bytes in and take bytes out.

pub mod client;
pub mod emit;
pub mod frame;
pub mod http;
pub mod json;
