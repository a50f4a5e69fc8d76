pub mod agents;
pub mod batches;
pub mod calls;
pub mod conversations;
pub mod do_not_call;
pub mod service;
pub mod trunks;
pub mod webhooks;
