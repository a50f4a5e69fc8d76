//! The node's upkeep of its trunks: a REGISTER binding for each trunk that asks for one, and
//! an OPTIONS probe of every trunk now and then. `GET /v1/trunks/{id}` shows both, as this node
//! sees them.

use domain::store::Store;
use domain::telephony::{ProbeView, RegistrationView, TrunkHealth, TrunkHealthSource, TrunkTarget};
use domain::{Millis, TrunkId};
use sip::registration::Registrar;
use sip::SipTelephony;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the upkeep runs (the service's configuration).
#[derive(Debug, Clone, Copy)]
pub struct UpkeepConfig {
    /// How often the trunks are read again (new, changed and deleted ones).
    pub refresh: Duration,
    /// How often each trunk is probed with OPTIONS; zero: never.
    pub probe_every: Duration,
    /// The binding a registration asks for.
    pub register_expires: Duration,
}

struct Entry {
    target: TrunkTarget,
    registrar: Option<Registrar>,
    probe: Option<ProbeView>,
    probed_at: Option<Instant>,
}

/// The trunks this node keeps up, and what it learnt of them.
#[derive(Default)]
pub struct TrunkUpkeep {
    trunks: Mutex<HashMap<TrunkId, Entry>>,
}

impl TrunkHealthSource for TrunkUpkeep {
    fn health(&self, trunk: TrunkId) -> Option<TrunkHealth> {
        let trunks = self.trunks.lock().ok()?;
        let entry = trunks.get(&trunk)?;
        Some(TrunkHealth {
            registration: entry.registrar.as_ref().map(|r| {
                let s = r.status();
                RegistrationView {
                    status: s.state.as_str(),
                    detail: s.detail,
                    expires_at: s.expires_at,
                    updated_at: s.updated_at,
                }
            }),
            probe: entry.probe.clone(),
        })
    }
}

impl TrunkUpkeep {
    /// Reads the trunks and keeps them up until `stop`.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        sip: Arc<SipTelephony>,
        config: UpkeepConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            match store.trunks_to_keep_up().await {
                Ok(trunks) => {
                    let targets = trunks.into_iter().map(|t| {
                        let target = TrunkTarget {
                            uri: t.uri,
                            username: t.username,
                            password: t.password,
                            transport: t.transport,
                            register: t.register,
                            srtp: t.srtp,
                        };
                        (t.id, target)
                    });
                    self.reconcile(&sip, targets.collect(), &config)
                }
                Err(e) => tracing::warn!(error = %e, "reading the trunks to keep up failed"),
            }
            self.probe_due(&sip, &config).await;
            tokio::select! {
                () = tokio::time::sleep(config.refresh) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Registrars stop renewing when dropped.
        if let Ok(mut trunks) = self.trunks.lock() {
            trunks.clear();
        }
    }

    /// Starts what is new, restarts what changed, forgets what is gone.
    fn reconcile(
        &self,
        sip: &SipTelephony,
        trunks: Vec<(TrunkId, TrunkTarget)>,
        config: &UpkeepConfig,
    ) {
        let Ok(mut known) = self.trunks.lock() else {
            return;
        };
        let wanted: HashMap<TrunkId, TrunkTarget> = trunks.into_iter().collect();
        known.retain(|id, entry| wanted.get(id) == Some(&entry.target));
        for (id, target) in wanted {
            if known.contains_key(&id) {
                continue;
            }
            let registrar = match target.register {
                true => match sip.keep_registered(&target, config.register_expires) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(trunk = id.0, error = %e, "cannot register with the trunk");
                        None
                    }
                },
                false => None,
            };
            known.insert(
                id,
                Entry {
                    target,
                    registrar,
                    probe: None,
                    probed_at: None,
                },
            );
        }
    }

    /// Probes the trunks whose last probe is older than `probe_every`, a few at a time.
    async fn probe_due(&self, sip: &SipTelephony, config: &UpkeepConfig) {
        if config.probe_every.is_zero() {
            return;
        }
        let due: Vec<(TrunkId, TrunkTarget)> = match self.trunks.lock() {
            Ok(trunks) => trunks
                .iter()
                .filter(|(_, e)| {
                    e.probed_at
                        .is_none_or(|at| at.elapsed() >= config.probe_every)
                })
                .map(|(id, e)| (*id, e.target.clone()))
                .collect(),
            Err(_) => return,
        };
        for chunk in due.chunks(16) {
            let probes = chunk.iter().map(|(id, target)| async move {
                let view = match sip.options(target).await {
                    Ok(reply) => ProbeView {
                        response: Some(format!("{} {}", reply.code, reply.reason)),
                        error: None,
                        round_trip_ms: u64::try_from(reply.round_trip.as_millis()).ok(),
                        at: Millis::now(),
                    },
                    Err(e) => ProbeView {
                        response: None,
                        error: Some(e.to_string()),
                        round_trip_ms: None,
                        at: Millis::now(),
                    },
                };
                (*id, view)
            });
            let results = futures::future::join_all(probes).await;
            if let Ok(mut trunks) = self.trunks.lock() {
                for (id, view) in results {
                    if let Some(entry) = trunks.get_mut(&id) {
                        entry.probe = Some(view);
                        entry.probed_at = Some(Instant::now());
                    }
                }
            }
        }
    }
}
