//! HTTP plumbing shared by every route: the connection loop with its timeouts and
//! graceful shutdown, and the JSON error body.

pub mod error;
pub mod serve;

pub use error::ApiError;
pub use serve::{ServeOptions, serve};
