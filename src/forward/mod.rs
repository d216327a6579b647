//! Forwarding the spool to CloudWatch Logs.
//!
//! - [`batch`]: building PutLogEvents calls under CloudWatch's rules (pure).
//! - [`retry`]: classifying failures into retry actions (pure).

pub mod batch;
pub mod retry;
