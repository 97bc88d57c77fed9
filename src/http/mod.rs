//! HTTP plumbing shared by every route: the connection loop with its timeouts,
//! connection limit and graceful shutdown, the body budget, the JSON error body, and
//! the limiter that keeps refusals from flooding the log.

pub mod budget;
pub mod error;
pub mod log_limit;
pub mod serve;

pub use budget::{BodyBudget, OverBudget, Reservation};
pub use error::ApiError;
pub use log_limit::{LogLimiter, shorten};
pub use serve::{ServeOptions, serve};
