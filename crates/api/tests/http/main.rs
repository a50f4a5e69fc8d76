//! The HTTP API end to end: the real router and the real SQLite store on a fresh file, served on
//! a random loopback port, driven by a real HTTP client. One test binary, many modules.

mod harness;

mod agents;
mod batches;
mod calls;
mod console;
mod conversations;
mod errors;
mod service;
mod webhooks;
