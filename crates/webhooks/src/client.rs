//! One delivery attempt over HTTP, and what it means for the delivery.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::CONTENT_TYPE;
use reqwest::redirect;

use crate::event::{EventId, EventType};
use crate::guard::{parse_target_url, AddressPolicy, UrlError, UrlPolicy};
use crate::secret::WebhookSecret;
use crate::sign::signature_headers;

/// A 2xx must arrive within this long for the attempt to count as delivered.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a response body is kept (for the delivery log); the rest is never read.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings of a [`DeliveryClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Which addresses may be connected to.
    pub policy: UrlPolicy,
    /// Total time for connecting, sending and reading the response.
    pub timeout: Duration,
    /// Response body bytes kept.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            policy: UrlPolicy::PUBLIC_ONLY,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// The HTTP client could not be built (TLS backend initialisation).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client")]
pub struct ClientBuildError(#[source] reqwest::Error);

/// What an attempt means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx arrived in time.
    Delivered,
    /// Network error, timeout, 429 or 5xx: try again per the schedule.
    Retry,
    /// Permanent failure: any other status, or a request that may not or cannot be sent.
    Failed,
    /// 410 Gone: permanent failure, and the target should be deactivated.
    FailedAndDeactivate,
}

impl Verdict {
    /// The verdict for a response status.
    ///
    /// Redirects are not followed and count as failed: the target is misconfigured (often
    /// http vs https) and retrying the same URL cannot succeed.
    pub fn for_status(status: u16) -> Self {
        match status {
            200..=299 => Verdict::Delivered,
            410 => Verdict::FailedAndDeactivate,
            429 | 500..=599 => Verdict::Retry,
            _ => Verdict::Failed,
        }
    }
}

/// The result of one attempt, for the delivery log and the retry decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// Response status, when a response arrived.
    pub status: Option<u16>,
    /// Why no usable response arrived (or why a redirect was not followed); never contains
    /// the URL, which may carry a customer's token.
    pub error: Option<String>,
    /// Time from the start of the attempt to its end.
    pub duration: Duration,
    /// What to do next.
    pub verdict: Verdict,
    /// The first `max_response_bytes` of the response body, lossily decoded as UTF-8.
    pub response_body: String,
}

/// One event to one target.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The target URL as stored.
    pub url: &'a str,
    /// The event's id, the same on every attempt.
    pub event_id: &'a EventId,
    /// The event's type.
    pub event_type: EventType,
    /// The exact body bytes (the serialised envelope), the same on every attempt.
    pub body: &'a [u8],
    /// Signing secrets, newest first.
    pub secrets: &'a [&'a WebhookSecret],
}

/// A resolver for reqwest that resolves names through the system resolver and drops every
/// address `policy` forbids, so a client built with it can only ever connect to permitted
/// addresses, whatever DNS answers at connection time.
pub fn guarded_resolver<P: AddressPolicy>(policy: P) -> Arc<GuardedResolver<P>> {
    Arc::new(GuardedResolver {
        policy: Arc::new(policy),
    })
}

/// See [`guarded_resolver`].
pub struct GuardedResolver<P> {
    policy: Arc<P>,
}

impl<P: AddressPolicy> Resolve for GuardedResolver<P> {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str();
            let resolved = tokio::net::lookup_host((host, 0)).await?;
            let permitted: Vec<SocketAddr> =
                resolved.filter(|addr| policy.permits(addr.ip())).collect();
            if permitted.is_empty() {
                tracing::warn!(host, "host resolves only to forbidden addresses");
                return Err(Box::new(UrlError::NotAllowed) as Box<dyn StdError + Send + Sync>);
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends signed webhook requests.
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    policy: UrlPolicy,
    max_response_bytes: usize,
}

impl DeliveryClient {
    /// A client that never follows redirects, ignores proxy settings (a proxy would connect
    /// on our behalf, past the address guard) and resolves through the guarded resolver.
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(guarded_resolver(config.policy))
            .timeout(config.timeout)
            .user_agent(concat!("outdial-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientBuildError)?;
        Ok(Self {
            http,
            policy: config.policy,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Makes one attempt, signed with the current time.
    pub async fn deliver(&self, delivery: &Delivery<'_>) -> AttemptOutcome {
        let started = Instant::now();
        let outcome = self.attempt(delivery, started).await;
        let host = parse_target_url(delivery.url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned));
        tracing::info!(
            event_id = %delivery.event_id,
            event_type = %delivery.event_type,
            host = host.as_deref().unwrap_or(""),
            status = outcome.status,
            error = outcome.error.as_deref(),
            verdict = ?outcome.verdict,
            duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
            "webhook attempt"
        );
        outcome
    }

    async fn attempt(&self, delivery: &Delivery<'_>, started: Instant) -> AttemptOutcome {
        let refused = |error: String| AttemptOutcome {
            status: None,
            error: Some(error),
            duration: started.elapsed(),
            verdict: Verdict::Failed,
            response_body: String::new(),
        };
        // IP-literal hosts are connected to without resolution, so the resolver never sees
        // them; they are checked here instead.
        let url = match parse_target_url(delivery.url)
            .and_then(|url| self.policy.check_literal_host(&url).map(|()| url))
        {
            Ok(url) => url,
            Err(err) => return refused(err.to_string()),
        };
        let headers = match signature_headers(
            delivery.event_id,
            delivery.event_type,
            Utc::now().timestamp(),
            delivery.body,
            delivery.secrets,
        ) {
            Ok(headers) => headers,
            Err(err) => return refused(err.to_string()),
        };

        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(delivery.body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }

        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let response_body = read_capped(response, self.max_response_bytes).await;
                AttemptOutcome {
                    status: Some(status.as_u16()),
                    error: status
                        .is_redirection()
                        .then(|| "redirect not followed".to_owned()),
                    duration: started.elapsed(),
                    verdict: Verdict::for_status(status.as_u16()),
                    response_body,
                }
            }
            Err(err) => {
                let verdict = if err.is_builder() || refused_by_guard(&err) {
                    Verdict::Failed
                } else {
                    Verdict::Retry
                };
                AttemptOutcome {
                    status: None,
                    error: Some(describe(err)),
                    duration: started.elapsed(),
                    verdict,
                    response_body: String::new(),
                }
            }
        }
    }
}

/// Reads at most `limit` body bytes; dropping the response afterwards closes the connection
/// instead of draining whatever else the receiver sends.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> String {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - kept.len());
                kept.extend_from_slice(&chunk[..take]);
            }
            Ok(None) => break,
            // The status already decided the verdict; a body cut short only shortens the log.
            Err(err) => {
                tracing::debug!(error = %describe(err), "webhook response body unreadable");
                break;
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn refused_by_guard(err: &reqwest::Error) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<UrlError>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The error and its causes on one line, without the request URL.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
