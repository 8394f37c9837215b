//! detour: an OpenAI-compatible LLM gateway on Pingora that walks a model fallback chain.
//!
//! The request path runs in one direction: [`proxy`] routes and reads the request, [`api`]
//! validates it, [`plan`] turns its `model` chain into targets, [`engine`] tries them in order
//! through each provider's adapter ([`providers`]) and relays the first answer (with [`sse`]
//! for streams); [`metrics`] counts it all. Modules depend downwards only: leaves
//! ([`secrets`], [`durations`], [`text`], [`sse`]) → [`api`] → [`config`] → [`catalog`] and
//! [`providers`] → [`gateway`] → [`plan`] → [`engine`] → [`proxy`]. See ARCHITECTURE.md.

pub mod admin;
mod admin_keys;
mod admin_records;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod durations;
pub mod engine;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod mock;
pub mod plan;
pub mod providers;
pub mod proxy;
pub mod records;
pub mod reload;
pub mod secrets;
pub mod sse;
pub mod store;
pub mod target;
pub mod text;
