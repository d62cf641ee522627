//! Node-to-node links (the backplane). So far only the piece every link
//! starts with: AWX's `secret` header, built and verified I/O-free. The
//! links themselves, peer tables, batching and interest come with the
//! backplane issue.

pub mod secret;
