//! Signed outbound webhooks for outdial.
//!
//! A call that ends becomes an [`event::Envelope`]; its serialised bytes are stored once and
//! sent, unchanged, on every attempt. Each attempt is signed afresh ([`sign`]) with the
//! target's current secrets ([`secret`]), sent by a [`client::DeliveryClient`] that can only
//! reach addresses the [`guard`] permits, and judged by its [`client::Verdict`]; retries follow
//! a [`schedule::RetrySchedule`]. The [`worker`] drives all of that from the durable outbox.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod client;
pub mod guard;
mod pipeline;
pub mod schedule;
pub mod secret;
pub mod sign;
pub mod worker;

pub use client::{
    guarded_resolver, AttemptOutcome, ClientConfig, Delivery, DeliveryClient, Verdict,
};
// The envelope lives in `domain` (the store writes it when a call settles); its paths here stay.
pub use domain::webhooks::{event, terminal};
pub use event::{Envelope, EventId, EventType};
pub use guard::{AddressPolicy, ModelEndpointPolicy, UrlError, UrlPolicy};
pub use schedule::RetrySchedule;
pub use secret::{SecretSet, WebhookSecret};
pub use sign::signature_headers;
pub use worker::{Worker, WorkerConfig, WorkerError};
