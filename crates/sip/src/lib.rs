//! outdial's SIP trunk adapter: a UAC that implements [`domain::telephony::Telephony`] over UDP.
//!
//! Signalling is `rsipstack` (transactions, dialogs, digest auth, CANCEL/BYE); media is a tokio
//! driver around the sans-IO `media` crate, one task and one UDP socket per call. One
//! [`SipTelephony`] owns one SIP endpoint shared by every call it places.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sip::SipError> {
//! let telephony = sip::SipTelephony::bind(sip::SipConfig {
//!     listen: "0.0.0.0:5060".parse().unwrap(),
//!     recording_dir: Some("/var/lib/outdial/recordings".into()),
//!     ..sip::SipConfig::default()
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod call;
mod config;
pub mod header;
mod outcome;
mod recording;
pub mod registration;
mod rtp_session;
pub mod sdp;
pub mod session_timer;
pub mod transfer;
mod trunk;

pub use config::SipConfig;
pub use outcome::{classify, Termination};
pub use rtp_session::MediaStats;
pub use trunk::OptionsReply;

use async_trait::async_trait;
use domain::telephony::{DialError, DialRequest, LiveCall, Telephony, TrunkTarget};
use rsipstack::dialog::dialog::Dialog;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, Request, Scheme, StatusCode, StatusCodeKind, Version};
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::tcp_listener::TcpListenerConnection;
use rsipstack::transport::tls::TlsConfig;
use rsipstack::transport::{udp::UdpConnection, SipConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Failures of the adapter itself (not of a call: those end in `CallEvent::Ended`).
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot bind SIP endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SIP stack: {0}")]
    Stack(#[source] Box<rsipstack::Error>),
    #[error("invalid SIP configuration: {0}")]
    InvalidConfig(#[source] header::HeaderError),
    #[error("cannot read the TLS certificate authorities in {path}: {source}")]
    TlsCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    UnsafeHeader(#[from] header::HeaderError),
    #[error("invalid trunk: {0}")]
    InvalidTrunk(String),
    #[error("trunk unreachable: {0}")]
    Unreachable(String),
    #[error("no response from trunk within {0:?}")]
    Timeout(Duration),
}

impl From<header::UriError> for SipError {
    fn from(e: header::UriError) -> Self {
        match e {
            header::UriError::Header(e) => Self::UnsafeHeader(e),
            header::UriError::Parse { .. } => Self::InvalidTrunk(e.to_string()),
        }
    }
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        Self::Stack(Box::new(e))
    }
}

/// Owner-side buffering of answered calls' audio.
const INBOUND_FRAMES: usize = 50;
/// Up to 10 s of agent speech may be queued ahead of playout; `FlushAudio` drops it all.
const OUTBOUND_FRAMES: usize = 500;

/// The SIP trunk adapter. Dropping it shuts the endpoint down; calls in progress then fail.
pub struct SipTelephony {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub config: SipConfig,
    pub dialogs: Arc<DialogLayer>,
    pub endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
    pub local: SocketAddr,
    pub ports: rtp_session::PortPool,
    pub counters: Arc<rtp_session::Counters>,
    /// What the header guard refused, by Call-ID.
    pub refusals: header::Refusals,
    cancel: CancellationToken,
}

impl SipTelephony {
    /// Binds the SIP UDP socket and starts the endpoint. Must run inside a tokio runtime.
    pub async fn bind(config: SipConfig) -> Result<Self, SipError> {
        let cancel = CancellationToken::new();
        let transport = TransportLayer::new(cancel.clone());
        let external = config
            .public_ip
            .map(|ip| SocketAddr::new(ip, config.listen.port()));
        let connection =
            UdpConnection::create_connection(config.listen, external, Some(cancel.child_token()))
                .await
                .map_err(|e| SipError::Bind {
                    addr: config.listen,
                    source: std::io::Error::other(e.to_string()),
                })?;
        let bound = connection
            .get_addr()
            .get_socketaddr()
            .map_err(SipError::from)?;
        // With port 0 the OS picked the port; the external address must carry the real one.
        let connection = match external {
            Some(ext) if ext.port() == 0 => {
                let mut c = connection;
                c.external = Some(trunk::sip_addr(SocketAddr::new(ext.ip(), bound.port())));
                c
            }
            _ => connection,
        };
        transport.add_transport(connection.into());
        // TCP on the UDP port: a far end our Contact tells `transport=tcp` that does not reuse
        // our connection (RFC 5923 alias) opens one here. Best effort: UDP trunks need none.
        let tcp_external = external.map(|ext| SocketAddr::new(ext.ip(), bound.port()));
        match TcpListenerConnection::new(bound, tcp_external).await {
            Ok(listener) => transport.add_transport(SipConnection::TcpListener(listener)),
            Err(e) => warn!(addr = %bound, error = %e, "no SIP over TCP on this address"),
        }
        transport.set_tls_config(TlsConfig {
            ca_certs: Some(tls_trust(config.tls_ca.as_deref())?),
            ..TlsConfig::default()
        });
        let user_agent = header::HeaderValue::new("User-Agent", config.user_agent.clone())
            .map_err(SipError::InvalidConfig)?;
        let refusals = header::Refusals::default();
        let endpoint = EndpointBuilder::new()
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport)
            .with_user_agent(user_agent.as_str())
            .with_option(EndpointOption {
                // Calls and probes set their own Call-ID; this keeps anything else the stack
                // might start off the library's default host.
                callid_suffix: Some(match external {
                    Some(ext) => ext.ip().to_string(),
                    None => bound.ip().to_string(),
                }),
                ..EndpointOption::default()
            })
            .with_inspector(Box::new(header::Guard {
                refusals: refusals.clone(),
            }))
            .build();
        let incoming = endpoint.incoming_transactions()?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let shared = Arc::new(Shared {
            ports: rtp_session::PortPool::new(config.rtp_ports.clone()),
            config,
            dialogs: dialogs.clone(),
            endpoint: endpoint.inner.clone(),
            local: bound,
            counters: Arc::default(),
            refusals,
            cancel,
        });
        tokio::spawn(async move { endpoint.serve().await });
        tokio::spawn(route_incoming(dialogs, incoming));
        info!(addr = %bound, "SIP endpoint listening");
        Ok(Self { shared })
    }

    /// The SIP endpoint's bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Media counters over all calls so far.
    pub fn media_stats(&self) -> MediaStats {
        self.shared.counters.snapshot()
    }

    /// Sends an out-of-dialog OPTIONS to the trunk: a keep-alive and a reachability probe. Any
    /// response (even 401/404) means the trunk is alive.
    pub async fn options(&self, trunk: &TrunkTarget) -> Result<OptionsReply, SipError> {
        trunk::options(&self.shared, trunk).await
    }
}

impl Drop for SipTelephony {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl Telephony for SipTelephony {
    async fn dial(&self, request: DialRequest) -> Result<LiveCall, DialError> {
        if self.shared.cancel.is_cancelled() {
            return Err(DialError::Unavailable("SIP endpoint shut down".into()));
        }
        spawn_call(&self.shared, request, true)
    }
}

/// The certificate authorities TLS trunks are checked against: the configured PEM file, else
/// the system's bundle; no file at all is an error only once a TLS trunk is dialled (an empty
/// store refuses every certificate).
fn tls_trust(configured: Option<&std::path::Path>) -> Result<Vec<u8>, SipError> {
    match configured {
        Some(path) => std::fs::read(path).map_err(|source| SipError::TlsCa {
            path: path.to_path_buf(),
            source,
        }),
        None => Ok(std::fs::read(config::SYSTEM_CA_BUNDLE).unwrap_or_default()),
    }
}

/// Starts one call's task: the callee's, or (`record: false`) a transfer's second leg.
pub(crate) fn spawn_call(
    shared: &Arc<Shared>,
    request: DialRequest,
    record: bool,
) -> Result<LiveCall, DialError> {
    let target = trunk::Target::parse(&request.trunk.uri, request.trunk.transport)
        .map_err(|e| DialError::Invalid(e.to_string()))?;
    // Refused before anything is sent: a value that could break a header line never goes out.
    let checked = call::Checked::new(&request, &target)
        .map_err(|e| DialError::Invalid(format!("not dialled: {e}")))?;
    let (event_tx, events) = mpsc::channel(16);
    let (control, control_rx) = mpsc::channel(16);
    tokio::spawn(call::run(
        shared.clone(),
        request,
        target,
        checked,
        event_tx,
        control_rx,
        record,
    ));
    Ok(LiveCall { events, control })
}

/// Hands in-dialog requests (BYE, re-INVITE, UPDATE, OPTIONS) to their dialog, whose call task
/// sees them as dialog states; answers what belongs to no call.
async fn route_incoming(dialogs: Arc<DialogLayer>, mut incoming: TransactionReceiver) {
    while let Some(mut tx) = incoming.recv().await {
        if let Some(Dialog::Invite(mut dialog)) = dialogs.match_dialog(&tx) {
            tokio::spawn(async move {
                if let Err(e) = dialog.handle(&mut tx).await {
                    debug!(error = %e, "in-dialog request failed");
                }
            });
            continue;
        }
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|to| to.tag().ok().flatten())
            .is_some();
        if tx.original.method == Method::Ack {
            continue;
        }
        let (status, extra) = match refusal(&tx.original) {
            Some(refused) => refused,
            None => (
                match tx.original.method {
                    Method::Options => StatusCode::OK,
                    _ if in_dialog => StatusCode::CallTransactionDoesNotExist,
                    // outdial only places calls.
                    Method::Invite => StatusCode::Decline,
                    _ => StatusCode::MethodNotAllowed,
                },
                Vec::new(),
            ),
        };
        tokio::spawn(async move {
            if let Err(e) = reply_stray(&mut tx, status, extra).await {
                warn!(error = %e, "reply to stray request failed");
            }
        });
    }
}

/// Why a request that belongs to no call is refused before its method is looked at, with the
/// headers the refusal carries: the checks RFC 3261 asks of any UAS, for the malformed requests
/// of RFC 4475 that the parser lets through.
fn refusal(req: &Request) -> Option<(StatusCode, Vec<Header>)> {
    let bad = |reason: &str| {
        debug!(method = %req.method, reason, "stray request refused");
        Some((StatusCode::BadRequest, Vec::new()))
    };
    // §8.2.1 names 505 for a SIP version we do not speak.
    if req.version != Version::V2 {
        return Some((StatusCode::VersionNotSupported, Vec::new()));
    }
    // Fields a request carries once (RFC 4475 multi01, mcl01).
    let mut seen: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        let name = match h {
            Header::To(_) => "To",
            Header::From(_) => "From",
            Header::CallId(_) => "Call-ID",
            Header::CSeq(_) => "CSeq",
            Header::MaxForwards(_) => "Max-Forwards",
            Header::ContentLength(_) => "Content-Length",
            _ => continue,
        };
        if seen.contains(&name) {
            return bad(&format!("more than one {name}"));
        }
        seen.push(name);
    }
    // The CSeq method is the request's (RFC 4475 mismatch01).
    match req.cseq_header().and_then(|c| c.method()) {
        Ok(m) if m == req.method => {}
        _ => return bad("CSeq method is not the request's"),
    }
    // §18.3: a datagram shorter than its Content-Length (clerr), or a length that is no
    // number (ncl), is refused with 400.
    if let Some(length) = req.headers.iter().find_map(|h| match h {
        Header::ContentLength(l) => Some(l.value().trim().to_string()),
        _ => None,
    }) {
        if length.parse::<usize>().ok() != Some(req.body.len()) {
            return bad("Content-Length does not match the body");
        }
    }
    // §8.2.2.1: 416 for a Request-URI scheme we cannot handle (unkscm, novelsc).
    match &req.uri.scheme {
        None | Some(Scheme::Sip) | Some(Scheme::Sips) => {}
        Some(Scheme::Other(s)) if s.eq_ignore_ascii_case("tel") => {}
        Some(_) => return Some((StatusCode::UnsupportedUriScheme, Vec::new())),
    }
    // §8.2.2.3: 420 listing every extension Require asks for; a request that belongs to no
    // call gets none (bext01).
    let required: Vec<String> = req
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::Require(r) => Some(r.value().to_string()),
            _ => None,
        })
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    if !required.is_empty() {
        return Some((
            StatusCode::BadExtension,
            vec![Header::Unsupported(required.join(", ").into())],
        ));
    }
    None
}

/// Answers a request that belongs to no call. Unlike `Transaction::reply`, the response is
/// `SIP/2.0` whatever version the request named, and carries one To, From, Call-ID and CSeq
/// even when the request repeated them.
async fn reply_stray(
    tx: &mut Transaction,
    status: StatusCode,
    extra: Vec<Header>,
) -> Result<(), rsipstack::Error> {
    let is_final = status.kind() != StatusCodeKind::Provisional;
    let mut resp = tx.endpoint_inner.make_response(&tx.original, status, None);
    let mut seen = [false; 4];
    resp.headers.retain(|h| {
        let i = match h {
            Header::To(_) => 0,
            Header::From(_) => 1,
            Header::CallId(_) => 2,
            Header::CSeq(_) => 3,
            _ => return true,
        };
        !std::mem::replace(&mut seen[i], true)
    });
    // A final response gets a To tag (§8.2.6.2) unless the request's To had one.
    if is_final {
        let to = resp.to_header()?.clone();
        if to.tag()?.is_none() {
            resp.headers.unique_push(to.with_tag(make_tag()).into());
        }
    }
    resp.version = Version::V2;
    resp.headers.extend(extra);
    tx.respond(resp).await
}
