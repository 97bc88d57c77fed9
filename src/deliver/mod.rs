//! Delivery: passing stored events on to subscribers as the platforms would, with
//! signing, timeouts, retries with backoff, dead letters and replay.
//!
//! - [`subscription`]: what a subscriber declares and which events match it;
//! - [`schedule`]: what follows an attempt (pure: retry time, dead letter, pause);
//! - [`send`]: the request a subscriber receives and the guarded HTTP client;
//! - [`platform_body`]: a DreamClass body as subscribers get it, prepared once per
//!   event;
//! - [`signing`]: the signing schemes (HMAC `v1`, ed25519 `v1a`) and key rotation;
//! - [`ordering`]: order per entity (which deliveries wait for an earlier one);
//! - [`guard`]: refuses private and internal destinations after DNS resolution;
//! - [`rate`]: a subscription's rate limit and the slow-down after a 429 (pure);
//! - [`dispatcher`]: leases due deliveries per subscription and runs the attempts.

pub mod config_sync;
pub mod dispatcher;
pub mod guard;
pub mod ordering;
pub mod ownership;
pub mod platform_body;
pub mod rate;
pub mod schedule;
pub mod send;
pub mod signing;
pub mod subscription;
