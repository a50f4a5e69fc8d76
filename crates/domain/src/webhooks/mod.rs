//! The webhook outbox port: targets, the events written beside the state changes that cause
//! them, and the deliveries a worker leases, attempts and settles. The envelope and the terminal
//! event a settlement writes are here too (`event`, `terminal`), so the store that writes them in
//! the settling transaction needs no delivery code. Secrets are plain strings here because their
//! rules live in the `webhooks` crate, which depends on this one; the API and the worker parse
//! them before they reach the store.

pub mod event;
pub mod terminal;

use crate::store::{Listed, ManageError, Page, StoreError};
use crate::{AgentId, Millis, TenantId};
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// At most this many targets per agent (the contract's limit).
pub const MAX_TARGETS_PER_AGENT: u64 = 5;

/// How long a rotated-out secret keeps signing beside its successor.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// A webhook target (`webhook_target_id`).
    WebhookTargetId
);
int_id!(
    /// One event to one target (`webhook_delivery_id`).
    DeliveryId
);

/// An event written to the outbox, in the transaction of the state change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// `evt_` + 12 characters; the same on every attempt to every target.
    pub event_id: String,
    /// The wire name, e.g. `call.completed`.
    pub event_type: String,
    pub tenant: TenantId,
    pub agent: AgentId,
    /// The conversation the event is about; `None` for `webhook.test`.
    pub conversation_id: Option<String>,
    /// Events of one chain reach each target in the order they were enqueued.
    pub chain_id: String,
    /// The full envelope, with `transcript` and `recording_url` filled in; each target's opt-outs
    /// are applied when it is sent.
    pub payload: serde_json::Value,
    pub created_at: Millis,
}

/// A target as stored. The secrets are not part of it: they are shown once (create, rotate) and
/// otherwise only read by the worker through [`LeasedDelivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub id: WebhookTargetId,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub include_transcript: bool,
    pub include_recording_url: bool,
    pub active: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A target to create; every value already validated.
#[derive(Clone, PartialEq, Eq)]
pub struct NewWebhookTarget {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub include_transcript: bool,
    pub include_recording_url: bool,
    pub active: bool,
}

impl fmt::Debug for NewWebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewWebhookTarget")
            .field("name", &self.name)
            .field("events", &self.events)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Fields a `PATCH` replaces; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookTargetPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub include_transcript: Option<bool>,
    pub include_recording_url: Option<bool>,
    pub active: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One attempt in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: Millis,
    /// The response status, when a response arrived.
    pub http_status: Option<u16>,
    /// Why no usable response arrived; never contains the URL or a secret.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// A delivery with its attempts, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub event_id: String,
    pub event_type: String,
    pub target: WebhookTargetId,
    pub conversation_id: Option<String>,
    pub status: DeliveryStatus,
    /// When the next attempt is due; `None` once the delivery is settled.
    pub next_attempt_at: Option<Millis>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Filters of `GET /v1/webhook-deliveries`; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub conversation_id: Option<String>,
    pub target: Option<WebhookTargetId>,
    pub status: Option<DeliveryStatus>,
}

/// A delivery leased to one worker: everything needed to sign and send it.
#[derive(Clone)]
pub struct LeasedDelivery {
    pub id: DeliveryId,
    pub tenant: TenantId,
    pub target: WebhookTargetId,
    pub event_id: String,
    pub event_type: String,
    /// The stored envelope (JSON text), before the target's opt-outs are applied.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub url: String,
    pub secret: String,
    /// The rotated-out secret and until when it keeps signing.
    pub previous_secret: Option<(String, Millis)>,
    pub include_transcript: bool,
    pub include_recording_url: bool,
}

impl fmt::Debug for LeasedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets and the URL (which may carry a customer's token) stay out of logs.
        f.debug_struct("LeasedDelivery")
            .field("id", &self.id)
            .field("target", &self.target)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// What an attempt leaves the delivery as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Delivered,
    /// Try again at this time.
    RetryAt(Millis),
    Failed,
    /// Failed, and the target is deactivated (410 Gone); its other pending deliveries fail too.
    FailedAndDeactivate,
}

/// One finished attempt, recorded with the delivery's next state in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub delivery: DeliveryId,
    pub attempt: AttemptRecord,
    pub next: NextState,
}

/// Limits of one lease call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    /// Who holds the lease (a worker's id, unique per process).
    pub owner: &'a str,
    pub now: Millis,
    /// How long the lease lasts; an unsettled delivery is leased again after it.
    pub lease_for: Duration,
    /// At most this many deliveries.
    pub limit: u32,
    /// At most this many leased deliveries per target at once, counting unexpired leases of every
    /// worker, so that a slow target cannot take all the slots.
    pub per_target: u32,
}

/// Figures for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending deliveries.
    pub depth: u64,
    /// Creation time of the oldest pending delivery.
    pub oldest_pending_created_at: Option<Millis>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    // Targets (API). All tenant-scoped: another tenant's agent or target is "not found".
    /// Creates a target of the tenant's agent: `ManageError::NotFound("agent")`, or
    /// `Conflict(TooManyTargets | TargetNameTaken)`.
    async fn create_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        target: &NewWebhookTarget,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError>;
    /// `NotFound("agent")` when the agent is not the tenant's.
    async fn list_webhook_targets(
        &self,
        tenant: TenantId,
        agent: AgentId,
    ) -> Result<Vec<WebhookTarget>, ManageError>;
    async fn get_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
    ) -> Result<Option<WebhookTarget>, StoreError>;
    /// Deactivating fails the target's pending deliveries (they could never be leased).
    async fn update_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        patch: &WebhookTargetPatch,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError>;
    /// Deletes the target and fails its pending deliveries; their log stays readable.
    async fn delete_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Makes `secret` current; the replaced one keeps signing for [`ROTATION_OVERLAP_MS`].
    async fn rotate_webhook_secret(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        secret: &str,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError>;

    // Outbox and delivery log.
    /// Writes the event and one pending delivery per active, subscribed target of its agent, in
    /// one transaction of its own; returns the number of deliveries created.
    async fn enqueue_event(&self, event: &OutboxEvent) -> Result<u64, StoreError>;
    /// Writes `event` (a `webhook.test`) for one target of the event's agent, whatever it
    /// subscribed to: `NotFound("webhook target")`, or `Conflict(TARGET_INACTIVE)`.
    async fn enqueue_test_event(
        &self,
        target: WebhookTargetId,
        event: &OutboxEvent,
    ) -> Result<DeliveryId, ManageError>;
    /// Newest first.
    async fn list_deliveries(
        &self,
        tenant: TenantId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<Listed<DeliveryRecord>, StoreError>;
    async fn get_delivery(
        &self,
        tenant: TenantId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>, StoreError>;
    /// Makes the delivery due now (pending again if it was settled). A delivery whose target is
    /// inactive or deleted is `Conflict(TARGET_INACTIVE)`; an unknown one `NotFound`.
    async fn retry_delivery(
        &self,
        tenant: TenantId,
        id: DeliveryId,
        now: Millis,
    ) -> Result<DeliveryRecord, ManageError>;

    // The worker.
    /// Leases due deliveries of active targets, oldest due first, never one whose chain has an
    /// earlier pending delivery to the same target, and within the per-target cap.
    async fn lease_due(&self, lease: LeaseRequest<'_>) -> Result<Vec<LeasedDelivery>, StoreError>;
    /// [`Self::lease_due`] with caps that replace `per_target` for the targets named (0: none of
    /// theirs), e.g. for one that keeps failing, of which a worker wants only a few at a time.
    async fn lease_due_capped(
        &self,
        lease: LeaseRequest<'_>,
        target_caps: &[(WebhookTargetId, u32)],
    ) -> Result<Vec<LeasedDelivery>, StoreError>;
    /// Records finished attempts and the deliveries' next states in one transaction. An attempt
    /// always enters the log; the delivery's state changes only while `owner` still holds its
    /// lease. Returns how many states changed.
    async fn record_attempts(
        &self,
        owner: &str,
        results: &[AttemptResult],
    ) -> Result<u64, StoreError>;
    /// Gives back `owner`'s leases of these still-pending deliveries unattempted, so that any
    /// worker can lease them at once; returns how many were given back.
    async fn release_leases(&self, owner: &str, ids: &[DeliveryId]) -> Result<u64, StoreError>;
    /// The earliest time something may become leasable: a pending delivery's due time, or an
    /// unexpired lease's end; `None` when nothing is pending.
    async fn next_delivery_due_at(&self, now: Millis) -> Result<Option<Millis>, StoreError>;
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;
}
