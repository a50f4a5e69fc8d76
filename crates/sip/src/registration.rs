//! Trunk registration (RFC 3261 §10) for trunks that only take calls from a registered user
//! agent: one REGISTER binding per trunk, digest challenges answered, renewed at three quarters
//! of what the registrar granted, retried with backoff after a failure. Its state is watched by
//! whoever shows the trunk.

use crate::header::{self, HeaderValue};
use crate::trunk::Target;
use crate::{SipError, SipTelephony};
use domain::telephony::{Transport, TrunkTarget};
use domain::Millis;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::{backoff_interval, refresh_interval, Registration};
use rsipstack::platform::CancellationToken;
use rsipstack::sip::{self, StatusCodeKind};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationState {
    /// The first REGISTER is on its way.
    Registering,
    Registered,
    /// The last attempt failed; another follows (backoff up to a minute).
    Failed,
}

impl RegistrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registering => "registering",
            Self::Registered => "registered",
            Self::Failed => "failed",
        }
    }
}

/// What the registrar last said of this node's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub state: RegistrationState,
    /// The registrar's last final answer (`200 OK`, `403 Forbidden`) or why none came.
    pub detail: Option<String>,
    /// When the binding runs out unless renewed.
    pub expires_at: Option<Millis>,
    /// When that was learnt.
    pub updated_at: Option<Millis>,
}

/// A trunk's binding kept alive; dropping it stops the renewals (the registrar lets the binding
/// run out).
pub struct Registrar {
    status: watch::Receiver<RegistrationStatus>,
    stop: CancellationToken,
}

impl Registrar {
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status changes (for whoever follows it closely; tests).
    pub async fn changed(&mut self) -> RegistrationStatus {
        let _ = self.status.changed().await;
        self.status()
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SipTelephony {
    /// Registers `sip:<username>@<trunk host>` with the trunk, asking for `expires`, and keeps
    /// the binding renewed until the returned [`Registrar`] is dropped.
    pub fn keep_registered(
        &self,
        trunk: &TrunkTarget,
        expires: Duration,
    ) -> Result<Registrar, SipError> {
        let target = Target::parse(&trunk.uri, trunk.transport)?;
        let username = trunk
            .username
            .clone()
            .ok_or_else(|| SipError::InvalidTrunk("registration needs a username".into()))?;
        let user = HeaderValue::new("trunk username", username.clone())?;
        let host = HeaderValue::new("trunk host", target.host_port())?;
        let mut server = header::sip_uri(&user, &host)?;
        server.auth = None;
        if target.transport != Transport::Udp {
            server
                .params
                .push(sip::Param::Transport(crate::trunk::wire_transport(
                    target.transport,
                )));
        }
        let mut registration = Registration::new(
            self.shared.endpoint.clone(),
            Some(Credential {
                username,
                password: trunk.password.clone().unwrap_or_default(),
                realm: None,
                auth_username: None,
            }),
        );
        let (tx, status) = watch::channel(RegistrationStatus {
            state: RegistrationState::Registering,
            detail: None,
            expires_at: None,
            updated_at: None,
        });
        let stop = self.shared.cancel.child_token();
        let asked = u32::try_from(expires.as_secs()).unwrap_or(u32::MAX).max(1);
        let span = tracing::info_span!("registration", trunk = %host);
        let token = stop.clone();
        tokio::spawn(
            async move {
                let mut failures = 0u32;
                loop {
                    let result = registration.register(server.clone(), Some(asked)).await;
                    let now = Millis::now();
                    let wait = match result {
                        Ok(resp) if resp.status_code.kind() == StatusCodeKind::Successful => {
                            failures = 0;
                            let granted = registration
                                .granted_expires
                                .filter(|g| *g > 0)
                                .unwrap_or(asked);
                            info!(granted, "registered");
                            tx.send_replace(RegistrationStatus {
                                state: RegistrationState::Registered,
                                detail: Some(status_line(&resp)),
                                expires_at: Some(now.after(Duration::from_secs(granted.into()))),
                                updated_at: Some(now),
                            });
                            refresh_interval(granted)
                        }
                        outcome => {
                            let detail = match outcome {
                                Ok(resp) => status_line(&resp),
                                Err(e) => format!("no answer: {e}"),
                            };
                            warn!(%detail, failures, "registration failed");
                            tx.send_modify(|s| {
                                s.state = RegistrationState::Failed;
                                s.detail = Some(detail);
                                s.updated_at = Some(now);
                            });
                            failures += 1;
                            backoff_interval(failures - 1)
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = token.cancelled() => return,
                    }
                }
            }
            .instrument(span),
        );
        Ok(Registrar { status, stop })
    }
}

/// `200 OK`, with the phrase the registrar sent.
fn status_line(resp: &sip::Response) -> String {
    format!(
        "{} {}",
        resp.status_code.code(),
        crate::call::reason_phrase(resp)
    )
}
