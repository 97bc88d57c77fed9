//! classhook: a webhook gateway for DreamClass and Loopwise.
//!
//! The path of an event: [`ingest`] checks a request in a fixed order, [`provider`]
//! parses and authenticates the platform's envelope and describes the event,
//! [`store`] commits it durably (group commit) before the 200 is sent. See
//! ARCHITECTURE.md for the whole picture.

pub mod api;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod deliver;
pub mod event;
pub mod http;
pub mod ingest;
pub mod lookup;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod provider;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod ui;
