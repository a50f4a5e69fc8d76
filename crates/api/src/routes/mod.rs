pub mod agents;
pub mod batches;
pub mod calls;
pub mod conversations;
pub mod service;
pub mod trunks;
pub mod webhooks;
