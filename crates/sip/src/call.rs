//! One outbound call from INVITE to `Ended`: all SIP dialog handling of the adapter lives here.
//! rsipstack runs the transactions (retransmits, ACK, digest retry, CANCEL); this task turns its
//! dialog states into `CallEvent`s and decides how the call ended.

use crate::header::{self, HeaderError, HeaderValue};
use crate::outcome::{classify, parse_retry_after, trunk_hold, Termination};
use crate::recording::Recorder;
use crate::rtp_session::{MediaCommand, MediaEvent, MediaHandle, MediaSetup};
use crate::sdp::{self, Crypto, RemoteMedia, SrtpKeys};
use crate::session_timer::{Due, Refreshed, SessionTimer};
use crate::transfer::{sipfrag_status, Step, TransferMachine};
use crate::trunk::{Probe, Target};
use crate::{Shared, INBOUND_FRAMES, OUTBOUND_FRAMES};
use domain::call::{Transfer, TransferMethod, TransferStatus};
use domain::telephony::{
    CallControl, CallEnd, CallEvent, DialRequest, LiveCall, MediaStream, Srtp, TransferRequest,
};
use domain::Millis;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{self, prelude::HeadersExt, Header, Response, StatusCode};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument, Span};

/// How long an ending call waits for the BYE's 200 before reporting `Ended`; the BYE
/// transaction itself carries on in the background.
const BYE_WAIT: Duration = Duration::from_secs(2);

/// Allow of our INVITEs: what a far end may send inside our calls (RFC 3261 §20.5); NOTIFY for
/// the progress of a REFER we sent.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, NOTIFY";
/// Supported of our INVITEs: session timers (RFC 4028), which we refresh or watch as the far
/// end decides; no 100rel.
const SUPPORTED: &str = "timer";

/// Every tenant-supplied value of a call that goes into a SIP header, checked once before
/// anything is sent.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    from: HeaderValue,
    to: HeaderValue,
    host: HeaderValue,
    username: Option<HeaderValue>,
}

impl Checked {
    pub(crate) fn new(request: &DialRequest, target: &Target) -> Result<Self, HeaderError> {
        Ok(Self {
            from: HeaderValue::new("caller number", request.from.to_string())?,
            to: HeaderValue::new("callee number", request.to.to_string())?,
            host: HeaderValue::new("trunk host", target.host_port())?,
            username: request
                .trunk
                .username
                .clone()
                .map(|u| HeaderValue::new("trunk username", u))
                .transpose()?,
        })
    }
}

/// A Call-ID of ours: random, at our own address (RFC 3261 §8.1.1.4).
pub(crate) fn call_id(ip: IpAddr) -> Result<HeaderValue, HeaderError> {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    HeaderValue::new(
        "Call-ID",
        format!("{}@{host}", rsipstack::transaction::make_uuid_v4()),
    )
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    request: DialRequest,
    target: Target,
    checked: Checked,
    events: mpsc::Sender<CallEvent>,
    control: mpsc::Receiver<CallControl>,
    record: bool,
) {
    let span = info_span!(
        "call",
        trace_id = %request.trace_id.0,
        conversation_id = %request.conversation_id,
    );
    async move {
        let mut call = Call {
            shared,
            request,
            target,
            checked,
            call_id: None,
            events,
            control,
            media: None,
            early: None,
            answered_at: None,
            sdp: None,
            held: false,
            hold: None,
            record,
            transfer: None,
            bridge: None,
            session: None,
            far_end_updates: false,
            refreshing: None,
        };
        let mut termination = call.drive().await;
        // A second leg of ours (a transfer being dialled or bridged) goes with this one.
        call.release_target_leg().await;
        if let Some(refused) = call.refusal() {
            termination = Termination::UnsafeHeader(refused);
        }
        let recording = match call.media.take() {
            Some(media) => media.stop().await,
            None => None,
        };
        let (status, failure_reason) = classify(&termination);
        info!(status = status.as_str(), reason = ?failure_reason, "call ended");
        let end = CallEnd {
            status,
            failure_reason,
            answered_at: call.answered_at,
            ended_at: Millis::now(),
            recording,
            retry_after: trunk_hold(&termination),
        };
        let _ = call.events.send(CallEvent::Ended(end)).await;
    }
    .instrument(span)
    .await;
}

struct Call {
    shared: Arc<Shared>,
    request: DialRequest,
    target: Target,
    checked: Checked,
    /// Set once the INVITE is built; keys what the header guard refused in this call.
    call_id: Option<HeaderValue>,
    events: mpsc::Sender<CallEvent>,
    control: mpsc::Receiver<CallControl>,
    media: Option<MediaHandle>,
    /// Early media's remote description (and its keys), the fallback if the 200 repeats no SDP.
    early: Option<(RemoteMedia, Vec<Crypto>)>,
    answered_at: Option<Millis>,
    /// Our session description: the offer, then our answers to the far end's offers.
    sdp: Option<sdp::LocalSdp>,
    /// The far end has put us on hold (its last offer wants none of our audio).
    held: bool,
    /// Tells the owner of the answered call's streams when the hold begins and ends.
    hold: Option<watch::Sender<bool>>,
    /// Whether this leg writes the call's recording (a transfer's second leg does not: the
    /// first leg's recording has both sides of the bridge).
    record: bool,
    transfer: Option<Transferring>,
    bridge: Option<Bridged>,
    /// The session timer the far end asked for, if any (RFC 4028).
    session: Option<SessionTimer>,
    /// Whether the far end takes UPDATE (its Allow), the lighter refresh.
    far_end_updates: bool,
    /// Our refresh on its way.
    refreshing: Option<JoinHandle<rsipstack::Result<Option<Response>>>>,
}

/// A transfer under way.
struct Transferring {
    request: TransferRequest,
    machine: TransferMachine,
    refer: Option<JoinHandle<rsipstack::Result<Option<Response>>>>,
    /// Our own leg to the target, once the far end did not take the call.
    leg: Option<LiveCall>,
}

/// The callee joined to the transfer target by us: both legs' audio relayed.
struct Bridged {
    leg: LiveCall,
    relay: JoinHandle<()>,
}

/// Why we sent CANCEL, which decides what the 487 that follows means.
#[derive(Clone, Copy)]
enum CancelCause {
    RingTimeout,
    Hangup,
}

impl Call {
    async fn drive(&mut self) -> Termination {
        let trunk = match self.target.resolve(self.shared.local).await {
            Ok(addr) => addr,
            Err(e) => return Termination::Transport(e),
        };
        let probe = match Probe::open(trunk, self.target.transport).await {
            Ok(p) => p,
            Err(e) => return Termination::Transport(format!("{trunk}: {e}")),
        };
        if self.target.transport != domain::telephony::Transport::Udp {
            // Connected (and for TLS, the certificate checked) before the INVITE, so a refused
            // connection or certificate is said as such, not as an INVITE that timed out.
            let destination = self.target.sip_addr(trunk);
            if let Err(e) = self
                .shared
                .endpoint
                .transport_layer
                .lookup(&destination, None)
                .await
            {
                return Termination::Transport(format!(
                    "{trunk} over {}: {e}",
                    self.target.transport
                ));
            }
        }
        let ip = match self.local_ip(&probe) {
            Ok(ip) => ip,
            Err(e) => return Termination::Other(format!("no local address for media: {e}")),
        };
        let rtp = match self.shared.ports.bind(ip).await {
            Ok(s) => s,
            Err(e) => return Termination::Other(format!("no RTP port available: {e}")),
        };
        let rtp_port = match rtp.local_addr() {
            Ok(a) => a.port(),
            Err(e) => return Termination::Other(format!("RTP socket: {e}")),
        };
        self.sdp = Some(sdp::LocalSdp::offer(
            ip,
            rtp_port,
            rand::random::<u32>().into(),
            self.request.trunk.srtp == Srtp::Required,
        ));

        let option = match self.invite_option(ip, trunk) {
            Ok(o) => o,
            Err(header::UriError::Header(e)) => return Termination::UnsafeHeader(e),
            Err(e) => return Termination::Other(e.to_string()),
        };
        let (state_tx, mut states) = self.shared.dialogs.new_dialog_state_channel();
        let (dialog, mut invite) = match self.shared.dialogs.do_invite_async(option, state_tx) {
            Ok(started) => started,
            Err(e) => return Termination::Other(format!("INVITE not sent: {e}")),
        };
        info!(%trunk, to = %self.request.to, "INVITE sent");
        if let Err(e) = probe.ping().await {
            invite.abort();
            return Termination::Transport(format!("{trunk}: {e}"));
        }

        let answer = self
            .until_answered(&dialog, &mut invite, &mut states, &probe, rtp)
            .await;
        // Only the ringing phase listens for ICMP; an answered call needs no extra socket.
        drop(probe);
        let termination = match answer {
            Ok(()) => self.while_answered(&dialog, &mut states).await,
            Err(t) => t,
        };
        self.shared.dialogs.remove_dialog(&dialog.id());
        termination
    }

    fn local_ip(&self, probe: &Probe) -> std::io::Result<IpAddr> {
        if let Some(ip) = self.shared.config.public_ip {
            return Ok(ip);
        }
        let listen = self.shared.local.ip();
        if !listen.is_unspecified() {
            return Ok(listen);
        }
        probe.local_ip()
    }

    fn invite_option(
        &mut self,
        ip: IpAddr,
        trunk: std::net::SocketAddr,
    ) -> Result<InviteOption, header::UriError> {
        let c = &self.checked;
        let local = HeaderValue::new(
            "local address",
            std::net::SocketAddr::new(ip, self.shared.local.port()).to_string(),
        )?;
        let credential = c.username.clone().map(|username| Credential {
            username: username.into_string(),
            // Only its digest goes on the wire, as hex.
            password: self.request.trunk.password.clone().unwrap_or_default(),
            realm: None,
            auth_username: None,
        });
        let call_id = call_id(ip)?;
        let option = InviteOption {
            caller: header::sip_uri(&c.from, &c.host)?,
            callee: header::sip_uri(&c.to, &c.host)?,
            contact: self.contact(header::sip_uri(&c.from, &local)?),
            destination: Some(self.target.sip_addr(trunk)),
            content_type: Some("application/sdp".into()),
            offer: self.sdp.as_ref().map(|s| s.current().as_bytes().to_vec()),
            credential,
            call_id: Some(call_id.to_string()),
            headers: Some(vec![
                Header::Allow(ALLOW.into()),
                Header::Supported(SUPPORTED.into()),
            ]),
            ..Default::default()
        };
        self.call_id = Some(call_id);
        Ok(option)
    }

    /// Our Contact names the transport the trunk reached us by (RFC 3261 §8.1.1.8), so a far end
    /// sends its requests in the call back the same way.
    fn contact(&self, mut uri: sip::Uri) -> sip::Uri {
        if self.target.transport != domain::telephony::Transport::Udp {
            uri.params
                .push(sip::Param::Transport(crate::trunk::wire_transport(
                    self.target.transport,
                )));
        }
        uri
    }

    /// What the header guard took out of this call's messages, if anything.
    fn refusal(&self) -> Option<HeaderError> {
        let id = self.call_id.as_ref()?;
        let mut refusals = self.shared.refusals.lock().ok()?;
        refusals.remove(id.as_str())
    }

    /// Everything before the 200: provisional responses, early media, the ring timeout, our own
    /// hangup, and an unreachable trunk. `Ok` means the call is answered and media attached.
    async fn until_answered(
        &mut self,
        dialog: &InviteDialog,
        invite: &mut JoinHandle<InviteAsyncResult>,
        states: &mut DialogStateReceiver,
        probe: &Probe,
        rtp: UdpSocket,
    ) -> Result<(), Termination> {
        let mut rtp = Some(rtp);
        let started = Instant::now();
        let ring_deadline = tokio::time::sleep(self.request.ring_timeout);
        tokio::pin!(ring_deadline);
        let unreachable = probe.unreachable();
        tokio::pin!(unreachable);
        let mut cancelled: Option<CancelCause> = None;
        let mut ringing_sent = false;

        let response = loop {
            tokio::select! {
                result = &mut *invite => break result,
                Some(state) = states.recv() => {
                    if let DialogState::Early(_, resp) = state {
                        self.on_provisional(&resp, &mut rtp, &mut ringing_sent).await;
                    }
                }
                () = &mut ring_deadline, if cancelled.is_none() => {
                    info!("ring timeout, sending CANCEL");
                    cancelled = Some(CancelCause::RingTimeout);
                    cancel(dialog);
                }
                command = self.control.recv(), if cancelled.is_none() => match command {
                    // A dropped LiveCall can never hang up, so it counts as a hangup.
                    Some(CallControl::Hangup) | None => {
                        info!("hangup before answer, sending CANCEL");
                        cancelled = Some(CancelCause::Hangup);
                        cancel(dialog);
                    }
                    Some(other) => debug!(?other, "control ignored before answer"),
                },
                e = &mut unreachable => {
                    invite.abort();
                    return Err(Termination::Transport(e.to_string()));
                }
                Some(event) = next_media_event(&mut self.media) => {
                    // Digits during early media are announcements' business, not the callee's.
                    debug!(?event, "media event before answer ignored");
                }
            }
        };

        let cancel_termination = |cause: CancelCause| match cause {
            CancelCause::RingTimeout => Termination::RingTimeout {
                after: started.elapsed().min(self.request.ring_timeout),
            },
            CancelCause::Hangup => Termination::HungUpBeforeAnswer,
        };
        let resp = match response {
            Err(e) => return Err(Termination::Other(format!("INVITE task failed: {e}"))),
            Ok(Err(e)) => return Err(transport_or_other(e)),
            Ok(Ok((_, None))) => return Err(Termination::NoResponse),
            Ok(Ok((_, Some(resp)))) => resp,
        };
        let code = resp.status_code.code();
        if resp.status_code.kind() != sip::StatusCodeKind::Successful {
            if let Some(cause) = cancelled.filter(|_| code == 487) {
                return Err(cancel_termination(cause));
            }
            // rsipstack reports Timer B as a 408 it builds itself: a real 408 carries the
            // responder's To tag, the synthesised one only our INVITE's tagless To.
            let tagged = resp.to_header().ok().and_then(|t| t.tag().ok().flatten());
            if code == 408 && tagged.is_none() {
                return Err(Termination::NoResponse);
            }
            // rsipstack answers the first challenge itself; one that still comes back as the
            // final response was a refusal of our credentials (or we had none).
            if code == 401 || code == 407 {
                return Err(Termination::AuthFailed {
                    code,
                    reason: reason_phrase(&resp),
                    had_credentials: self.checked.username.is_some(),
                });
            }
            // Our RTP/SAVP offer refused: on a trunk that requires SRTP that is the trunk (or
            // the callee's device) not speaking it, said as such.
            let secure = self.sdp.as_ref().is_some_and(sdp::LocalSdp::secure);
            if secure && (code == 488 || code == 606) {
                return Err(Termination::Srtp(format!(
                    "the far end refused our RTP/SAVP offer ({code} {})",
                    reason_phrase(&resp)
                )));
            }
            return Err(Termination::Rejected {
                code,
                reason: reason_phrase(&resp),
                retry_after: retry_after(&resp),
            });
        }
        if let Some(cause) = cancelled {
            // 200 crossed our CANCEL; rsipstack ACKs and BYEs it.
            return Err(cancel_termination(cause));
        }

        let (remote, crypto) = match body_media(&resp).or(self.early.clone().map(Ok)) {
            Some(Ok(remote)) => remote,
            Some(Err(e)) => {
                self.bye(dialog).await;
                return Err(Termination::Other(format!("unusable SDP answer: {e}")));
            }
            None => {
                self.bye(dialog).await;
                return Err(Termination::Other("200 OK without SDP answer".into()));
            }
        };
        let keys = match self.agree_keys(&remote, &crypto) {
            Ok(keys) => keys,
            Err(refusal) => {
                warn!(error = %refusal, "answer without usable SRTP; hanging up");
                self.bye(dialog).await;
                return Err(Termination::Srtp(refusal.to_string()));
            }
        };
        self.start_or_update_media(remote, keys, &mut rtp);
        self.session =
            SessionTimer::from_answer(header(&resp.headers, "Session-Expires"), Instant::now());
        self.far_end_updates = header(&resp.headers, "Allow").is_some_and(|allow| {
            allow
                .split(',')
                .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
        });
        if let Some(t) = &self.session {
            info!(interval_s = t.interval().as_secs(), refresher = ?t.refresher(), "session timer");
        }
        let (in_tx, inbound) = mpsc::channel(INBOUND_FRAMES);
        let (outbound, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
        self.media_command(MediaCommand::Attach {
            inbound: in_tx,
            outbound: out_rx,
        });
        let at = Millis::now();
        self.answered_at = Some(at);
        let srtp = self.sdp.as_ref().is_some_and(sdp::LocalSdp::secure);
        info!(codec = ?remote.codec, remote = %remote.addr, srtp, "answered");
        let (media, hold) = MediaStream::new(inbound, outbound);
        self.hold = Some(hold);
        self.emit(CallEvent::Answered { at, media }).await;
        Ok(())
    }

    async fn on_provisional(
        &mut self,
        resp: &Response,
        rtp: &mut Option<UdpSocket>,
        ringing_sent: &mut bool,
    ) {
        match body_media(resp) {
            Some(Ok((remote, crypto))) => {
                let keys = match self.agree_keys(&remote, &crypto) {
                    Ok(keys) => keys,
                    Err(refusal) => {
                        // The 200 decides; early media without keys is not played.
                        warn!(error = %refusal, "early media without usable SRTP ignored");
                        return;
                    }
                };
                let first = self.early.is_none();
                self.early = Some((remote, crypto));
                self.start_or_update_media(remote, keys, rtp);
                if first {
                    info!(remote = %remote.addr, "early media");
                    self.emit(CallEvent::EarlyMedia).await;
                }
            }
            Some(Err(e)) => warn!(error = %e, "unusable SDP in provisional response"),
            None if !*ringing_sent && self.early.is_none() => {
                *ringing_sent = true;
                self.emit(CallEvent::Ringing).await;
            }
            None => {}
        }
    }

    /// The answered call: ends on either side's BYE, `max_duration`, or silence on the wire.
    async fn while_answered(
        &mut self,
        dialog: &InviteDialog,
        states: &mut DialogStateReceiver,
    ) -> Termination {
        let max_duration = tokio::time::sleep(self.request.max_duration);
        tokio::pin!(max_duration);
        loop {
            let deadline = self.transfer.as_ref().and_then(|t| t.machine.deadline());
            tokio::select! {
                state = states.recv() => match state {
                    Some(DialogState::Terminated(_, reason)) => {
                        info!(?reason, "dialog terminated by far end");
                        return match reason {
                            TerminatedReason::UasBye | TerminatedReason::UacBye => Termination::Completed,
                            TerminatedReason::Timeout => Termination::Other("dialog timed out".into()),
                            other => Termination::Other(format!("dialog ended: {other:?}")),
                        };
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        // A re-INVITE or UPDATE: a session refresh, a hold or resume, a codec
                        // change, or a move of the far end's media; answered per RFC 3264.
                        let body = match body_media_of(&req.body) {
                            Some(Ok((remote, crypto))) => {
                                let answered = self.sdp.as_mut().map(|s| s.answer(&remote, &crypto));
                                match answered {
                                    Some(Ok((body, keys))) => {
                                        let body = body.to_string();
                                        self.media_command(MediaCommand::Remote(remote));
                                        if let Some(keys) = keys {
                                            self.media_command(MediaCommand::Keys(keys));
                                        }
                                        self.set_held(remote.held());
                                        Some(body)
                                    }
                                    Some(Err(refusal)) => {
                                        // RFC 3264 §8: a refused offer leaves the session as it was.
                                        warn!(error = %refusal, "offer without usable SRTP refused");
                                        if let Err(e) = handle.respond(StatusCode::NotAcceptableHere, None, None).await {
                                            warn!(error = %e, "could not refuse the offer");
                                        }
                                        continue;
                                    }
                                    None => None,
                                }
                            }
                            Some(Err(e)) => {
                                warn!(error = %e, "unusable SDP in session refresh");
                                self.sdp.as_ref().map(|s| s.current().to_string())
                            }
                            None => self.sdp.as_ref().map(|s| s.current().to_string()),
                        };
                        let with_sdp = req.method == sip::Method::Invite || !req.body.is_empty();
                        let mut headers = Vec::new();
                        let body = match body {
                            Some(body) if with_sdp => {
                                headers.push(Header::ContentType("application/sdp".into()));
                                Some(body.into_bytes())
                            }
                            _ => None,
                        };
                        let expires = header(&req.headers, "Session-Expires");
                        if let Some(value) = SessionTimer::on_their_refresh(&mut self.session, expires, Instant::now()) {
                            headers.push(Header::SessionExpires(value.into()));
                            headers.push(Header::Require("timer".into()));
                        }
                        let headers = Some(headers).filter(|h| !h.is_empty());
                        debug!(method = %req.method, "answering session refresh");
                        if let Err(e) = handle.respond(StatusCode::OK, headers, body).await {
                            warn!(error = %e, "could not answer session refresh");
                        }
                    }
                    Some(DialogState::Options(_, _, handle)) => {
                        let _ = handle.reply(StatusCode::OK).await;
                    }
                    Some(DialogState::Notify(_, req, handle)) => {
                        let _ = handle.reply(StatusCode::OK).await;
                        let status = sipfrag_status(&req.body);
                        debug!(?status, "NOTIFY of our REFER");
                        if let Some(t) = self.transfer.as_mut() {
                            let step = t.machine.on_notify(status);
                            if let Some(end) = self.on_step(step, dialog).await {
                                return end;
                            }
                        }
                    }
                    // INFO, MESSAGE, REFER: dropping the handle answers 501.
                    Some(other) => debug!(state = %other, "dialog state"),
                    None => return Termination::Other("dialog state channel closed".into()),
                },
                () = until(self.session.as_ref().and_then(SessionTimer::due)) => {
                    if let Some(end) = self.session_due(dialog).await {
                        return end;
                    }
                }
                Some(answer) = refresh_answer(&mut self.refreshing) => {
                    if let Some(end) = self.on_refresh_answer(answer, dialog).await {
                        return end;
                    }
                }
                () = &mut max_duration => {
                    info!("max duration reached, sending BYE");
                    self.bye(dialog).await;
                    return Termination::Completed;
                }
                command = self.control.recv() => match command {
                    Some(CallControl::Hangup) | None => {
                        info!("hangup, sending BYE");
                        self.bye(dialog).await;
                        return Termination::Completed;
                    }
                    Some(CallControl::SendDtmf(digit)) => self.media_command(MediaCommand::Dtmf(digit)),
                    Some(CallControl::FlushAudio) => self.media_command(MediaCommand::Flush),
                    Some(CallControl::Transfer(request)) => {
                        if let Some(end) = self.refer(dialog, request).await {
                            return end;
                        }
                    }
                },
                news = transfer_news(&mut self.transfer, &mut self.bridge) => {
                    let end = match news {
                        News::Target(event) => self.on_target_event(event, dialog).await,
                        News::Refer(refer) => self.on_refer_answer(refer, dialog).await,
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                () = until(deadline) => {
                    let step = match self.transfer.as_mut() {
                        Some(t) => t.machine.on_time(Instant::now()),
                        None => Step::Wait,
                    };
                    if step == Step::Dial {
                        info!("no final NOTIFY in time; dialling the target ourselves");
                    }
                    if let Some(end) = self.on_step(step, dialog).await {
                        return end;
                    }
                }
                Some(event) = next_media_event(&mut self.media) => match event {
                    MediaEvent::Dtmf(digit) => self.emit(CallEvent::Dtmf(digit)).await,
                    MediaEvent::NoRtp => {
                        warn!("no RTP after answer, sending BYE");
                        self.bye(dialog).await;
                        return Termination::NoRtp { after: self.shared.config.no_rtp_timeout };
                    }
                },
            }
        }
    }

    /// The session timer's moment: our refresh is sent, or the session has expired.
    async fn session_due(&mut self, dialog: &InviteDialog) -> Option<Termination> {
        let t = self.session.as_mut()?;
        match t.on_time(Instant::now())? {
            Due::Refresh => {
                let headers = vec![
                    Header::SessionExpires(t.request_value().into()),
                    Header::Supported(SUPPORTED.into()),
                ];
                let dialog = dialog.clone();
                // UPDATE needs no SDP and no ACK; a far end without it gets a re-INVITE that
                // repeats our session description unchanged (RFC 3264 §8).
                let sdp = (!self.far_end_updates)
                    .then(|| self.sdp.as_ref().map(|s| s.current().as_bytes().to_vec()))
                    .flatten();
                debug!(update = sdp.is_none(), "refreshing the session");
                self.refreshing = Some(tokio::spawn(async move {
                    match sdp {
                        None => dialog.update(Some(headers), None).await,
                        Some(sdp) => {
                            let mut headers = headers;
                            headers.push(Header::ContentType("application/sdp".into()));
                            dialog.reinvite(Some(headers), Some(sdp)).await
                        }
                    }
                }));
                None
            }
            Due::Expired => {
                info!("the session expired without a refresh, sending BYE");
                self.bye(dialog).await;
                Some(Termination::Other(
                    "session expired: no refresh within its Session-Expires (RFC 4028)".into(),
                ))
            }
        }
    }

    async fn on_refresh_answer(
        &mut self,
        answer: RequestResult,
        dialog: &InviteDialog,
    ) -> Option<Termination> {
        self.refreshing = None;
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                warn!(error = %e, "session refresh failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "session refresh task failed");
                None
            }
        };
        if let Some(resp) = resp.as_ref() {
            self.on_refresh_keys(resp);
        }
        let t = self.session.as_mut()?;
        let code = resp.as_ref().map(|r| r.status_code.code());
        let headers = resp.as_ref().map(|r| &r.headers);
        let expires = headers.and_then(|h| header(h, "Session-Expires"));
        let min_se = headers.and_then(|h| header(h, "Min-SE"));
        match t.on_refresh_answer(code, expires, min_se, Instant::now()) {
            Refreshed::Yes => {
                debug!(?code, "session refreshed");
                None
            }
            Refreshed::Off => {
                info!("the far end keeps no session timer any more");
                self.session = None;
                None
            }
            Refreshed::Later => {
                warn!(?code, "session refresh not accepted; trying again");
                None
            }
            Refreshed::Gone => {
                info!(?code, "the far end no longer knows the call");
                self.bye(dialog).await;
                Some(Termination::Other(format!(
                    "session refresh answered {}: the far end no longer knows the call",
                    code.unwrap_or_default()
                )))
            }
        }
    }

    /// Starts a blind transfer: REFER to the target's number at the trunk.
    async fn refer(
        &mut self,
        dialog: &InviteDialog,
        request: TransferRequest,
    ) -> Option<Termination> {
        if self.transfer.is_some() || self.bridge.is_some() {
            warn!("a transfer is already under way; another is ignored");
            return None;
        }
        let uri = header::HeaderValue::new("transfer number", request.number.to_string())
            .map_err(header::UriError::Header)
            .and_then(|number| header::sip_uri(&number, &self.checked.host));
        let machine = TransferMachine::new(Instant::now(), self.shared.config.transfer_timeout);
        let refer = match uri {
            Ok(uri) => {
                info!(target = %request.target, number = %request.number, "sending REFER");
                let dialog = dialog.clone();
                Some(tokio::spawn(
                    async move { dialog.refer(uri, None, None).await },
                ))
            }
            Err(e) => {
                warn!(error = %e, "no REFER for this number");
                None
            }
        };
        let unsent = refer.is_none();
        let mut t = Transferring {
            request,
            machine,
            refer,
            leg: None,
        };
        // Unsendable is the same as refused: the bridge is tried.
        let step = if unsent {
            t.machine.on_refer_response(None)
        } else {
            Step::Wait
        };
        self.transfer = Some(t);
        self.on_step(step, dialog).await
    }

    /// The REFER's final response, or why there was none.
    async fn on_refer_answer(
        &mut self,
        refer: RequestResult,
        dialog: &InviteDialog,
    ) -> Option<Termination> {
        let t = self.transfer.as_mut()?;
        // Done: a finished task must not be polled again.
        t.refer = None;
        let code = match refer {
            Ok(Ok(Some(resp))) => Some(resp.status_code.code()),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                warn!(error = %e, "REFER failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "REFER task failed");
                None
            }
        };
        info!(?code, "REFER answered");
        let step = t.machine.on_refer_response(code);
        self.on_step(step, dialog).await
    }

    /// Acts on the transfer machine's decision; `Some` ends this leg.
    async fn on_step(&mut self, step: Step, dialog: &InviteDialog) -> Option<Termination> {
        match step {
            Step::Wait => None,
            Step::Dial => {
                self.dial_target().await;
                None
            }
            Step::Done(method, status) => {
                let t = self.transfer.take()?;
                self.report_transfer(&t.request, method, status).await;
                if (method, status) == (TransferMethod::Refer, TransferStatus::Connected) {
                    // RFC 3515 practice: the transferor leaves once the target has answered.
                    info!("transferred by REFER; leaving the call");
                    self.bye(dialog).await;
                    return Some(Termination::Completed);
                }
                None
            }
        }
    }

    /// Dials the transfer target on the same trunk, as the same caller id.
    async fn dial_target(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        info!(number = %t.request.number, "dialling the transfer target to bridge");
        let request = DialRequest {
            to: t.request.number.clone(),
            ..self.request.clone()
        };
        match crate::spawn_call(&self.shared, request, false) {
            Ok(leg) => t.leg = Some(leg),
            Err(e) => {
                warn!(error = %e, "the transfer target could not be dialled");
                // As a target that did not answer.
                if let Step::Done(method, status) = t.machine.on_target(false) {
                    if let Some(t) = self.transfer.take() {
                        self.report_transfer(&t.request, method, status).await;
                    }
                }
            }
        }
    }

    /// An event of our second leg: while it rings, its answer bridges the call and its end
    /// fails the transfer; once bridged, its end ends the call.
    async fn on_target_event(
        &mut self,
        event: Option<CallEvent>,
        dialog: &InviteDialog,
    ) -> Option<Termination> {
        if self.bridge.is_some() {
            if matches!(event, Some(CallEvent::Ended(_)) | None) {
                info!("the transfer target hung up; ending the call");
                self.bye(dialog).await;
                return Some(Termination::Completed);
            }
            return None;
        }
        let answered = match event {
            Some(CallEvent::Answered { media, .. }) => Some(media),
            Some(CallEvent::Ended(end)) => {
                info!(status = end.status.as_str(), reason = ?end.failure_reason, "the transfer target was not reached");
                None
            }
            None => None,
            Some(_) => return None,
        };
        let mut t = self.transfer.take()?;
        let step = t.machine.on_target(answered.is_some());
        let Step::Done(method, status) = step else {
            self.transfer = Some(t);
            return None;
        };
        // Reported before the owner's streams close, so it hears how its part ended first.
        self.report_transfer(&t.request, method, status).await;
        if let (Some(target_media), Some(leg)) = (answered, t.leg.take()) {
            // The owner's streams are replaced (and so closed): the callee now hears the target.
            let (in_tx, inbound) = mpsc::channel(INBOUND_FRAMES);
            let (outbound, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
            self.media_command(MediaCommand::Attach {
                inbound: in_tx,
                outbound: out_rx,
            });
            // The owner is gone from the call: a hold now only silences the bridge.
            let (callee, _) = MediaStream::new(inbound, outbound);
            let relay = tokio::spawn(relay(callee, target_media).in_current_span());
            info!("bridged the callee to the transfer target");
            self.bridge = Some(Bridged { leg, relay });
        }
        None
    }

    async fn report_transfer(
        &self,
        request: &TransferRequest,
        method: TransferMethod,
        status: TransferStatus,
    ) {
        info!(
            method = method.as_str(),
            status = status.as_str(),
            "transfer over"
        );
        self.emit(CallEvent::Transfer(outcome(request, method, status)))
            .await;
    }

    /// Hangs up a second leg of ours, ringing or bridged.
    async fn release_target_leg(&mut self) {
        let leg = self.transfer.take().and_then(|t| t.leg).or_else(|| {
            self.bridge.take().map(|b| {
                b.relay.abort();
                b.leg
            })
        });
        if let Some(leg) = leg {
            let _ = leg.control.send(CallControl::Hangup).await;
        }
    }

    fn set_held(&mut self, held: bool) {
        if held != self.held {
            self.held = held;
            if let Some(hold) = self.hold.as_ref() {
                hold.send_replace(held);
            }
            info!(
                held,
                "far end {} the call",
                if held { "held" } else { "resumed" }
            );
        }
    }

    /// The answer to our re-INVITE refresh may carry a new key of the far end's (RFC 4568
    /// §7.1.4 lets an answerer re-key): its packets are then only readable under that key.
    fn on_refresh_keys(&mut self, resp: &Response) {
        if resp.status_code.kind() != sip::StatusCodeKind::Successful
            || !self.sdp.as_ref().is_some_and(sdp::LocalSdp::secure)
        {
            return;
        }
        let Some(Ok((remote, crypto))) = body_media(resp) else {
            return;
        };
        match self.agree_keys(&remote, &crypto) {
            Ok(Some(keys)) => {
                self.media_command(MediaCommand::Remote(remote));
                self.media_command(MediaCommand::Keys(keys));
            }
            Ok(None) => {}
            Err(refusal) => {
                warn!(error = %refusal, "refresh answer without usable SRTP; keys kept")
            }
        }
    }

    /// The SRTP keys of the far end's answer; `None` for a plain call.
    fn agree_keys(
        &mut self,
        remote: &RemoteMedia,
        crypto: &[Crypto],
    ) -> Result<Option<SrtpKeys>, sdp::SrtpRefusal> {
        match self.sdp.as_mut() {
            Some(local) => local.accept_answer(remote, crypto),
            None => Ok(None),
        }
    }

    fn start_or_update_media(
        &mut self,
        remote: RemoteMedia,
        keys: Option<SrtpKeys>,
        rtp: &mut Option<UdpSocket>,
    ) {
        if let Some(media) = self.media.as_ref() {
            let _ = media.commands.send(MediaCommand::Remote(remote));
            if let Some(keys) = keys {
                let _ = media.commands.send(MediaCommand::Keys(keys));
            }
            return;
        }
        let Some(socket) = rtp.take() else {
            return;
        };
        let dir = self
            .shared
            .config
            .recording_dir
            .as_ref()
            .filter(|_| self.record);
        let recorder = dir.and_then(|dir| {
            Recorder::create(dir, &self.request.conversation_id.to_string())
                .map_err(|e| warn!(error = %e, "recording disabled for this call"))
                .ok()
        });
        self.media = Some(MediaHandle::start(
            MediaSetup {
                socket,
                remote,
                recorder,
                no_rtp_timeout: self.shared.config.no_rtp_timeout,
                counters: self.shared.counters.clone(),
                ssrc: rand::random(),
                initial_sequence: rand::random(),
                initial_timestamp: rand::random(),
                srtp: keys,
            },
            Span::current(),
        ));
    }

    fn media_command(&self, command: MediaCommand) {
        if let Some(media) = self.media.as_ref() {
            let _ = media.commands.send(command);
        }
    }

    async fn emit(&self, event: CallEvent) {
        // An owner that stopped listening still gets its call torn down properly.
        let _ = self.events.send(event).await;
    }

    async fn bye(&self, dialog: &InviteDialog) {
        let dialog = dialog.clone();
        let bye = tokio::spawn(async move { dialog.bye().await });
        match tokio::time::timeout(BYE_WAIT, bye).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "BYE failed"),
            Ok(Err(e)) => warn!(error = %e, "BYE task failed"),
            Err(_) => warn!("no answer to BYE yet; reporting the call ended anyway"),
        }
    }
}

fn cancel(dialog: &InviteDialog) {
    let dialog = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = dialog.cancel().await {
            warn!(error = %e, "CANCEL failed");
        }
    });
}

fn outcome(request: &TransferRequest, method: TransferMethod, status: TransferStatus) -> Transfer {
    Transfer {
        target: request.target.clone(),
        number: request.number.clone(),
        method,
        status,
        at: Millis::now(),
    }
}

/// Relays 20 ms frames both ways between two answered calls until either stream closes.
async fn relay(mut a: MediaStream, mut b: MediaStream) {
    loop {
        // A side that falls behind loses frames rather than delaying the other.
        tokio::select! {
            frame = a.inbound.recv() => match frame {
                Some(f) => { let _ = b.outbound.try_send(f); }
                None => break,
            },
            frame = b.inbound.recv() => match frame {
                Some(f) => { let _ = a.outbound.try_send(f); }
                None => break,
            },
        }
    }
}

/// What an in-dialog request of ours (REFER, a session refresh) came back with.
type RequestResult = Result<rsipstack::Result<Option<Response>>, tokio::task::JoinError>;

/// What a transfer under way heard: its REFER's outcome, or an event of our second leg.
enum News {
    Refer(RequestResult),
    Target(Option<CallEvent>),
}

fn transfer_news<'a>(
    transfer: &'a mut Option<Transferring>,
    bridge: &'a mut Option<Bridged>,
) -> Pin<Box<dyn Future<Output = News> + Send + 'a>> {
    let (refer, leg) = match (transfer.as_mut(), bridge.as_mut()) {
        (Some(t), _) => (t.refer.as_mut(), t.leg.as_mut()),
        (None, Some(b)) => (None, Some(&mut b.leg)),
        (None, None) => (None, None),
    };
    Box::pin(async move {
        tokio::select! {
            r = async {
                match refer {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => News::Refer(r),
            e = async {
                match leg {
                    Some(leg) => leg.events.recv().await,
                    None => std::future::pending().await,
                }
            } => News::Target(e),
        }
    })
}

/// A header's value by name (compact forms are parsed to theirs), as the far end wrote it.
fn header<'a>(headers: &'a sip::Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(Header::value)
}

/// Our session refresh's answer, once it has one.
fn refresh_answer(
    refreshing: &mut Option<JoinHandle<rsipstack::Result<Option<Response>>>>,
) -> Pin<Box<dyn Future<Output = Option<RequestResult>> + Send + '_>> {
    match refreshing {
        Some(task) => Box::pin(async move { Some(task.await) }),
        None => Box::pin(std::future::pending()),
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn next_media_event(
    media: &mut Option<MediaHandle>,
) -> Pin<Box<dyn Future<Output = Option<MediaEvent>> + Send + '_>> {
    match media {
        Some(m) => Box::pin(m.events.recv()),
        None => Box::pin(std::future::pending()),
    }
}

type BodyMedia = Option<Result<(RemoteMedia, Vec<Crypto>), sdp::SdpError>>;

fn body_media(resp: &Response) -> BodyMedia {
    body_media_of(&resp.body)
}

fn body_media_of(body: &[u8]) -> BodyMedia {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(sdp::parse_with_crypto(&String::from_utf8_lossy(body)))
}

fn transport_or_other(e: rsipstack::Error) -> Termination {
    match e {
        rsipstack::Error::TransportLayerError(..) => Termination::Transport(e.to_string()),
        other => Termination::Other(format!("INVITE failed: {other}")),
    }
}

/// The reason phrase as the far end wrote it, else the standard one for the code.
/// The response's `Retry-After`, if it has a readable one.
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers.iter().find_map(|h| match h {
        Header::RetryAfter(v) => parse_retry_after(v.value()),
        _ => None,
    })
}

pub(crate) fn reason_phrase(resp: &Response) -> String {
    resp.wire_reason
        .clone()
        .unwrap_or_else(|| resp.status_code.text().to_string())
}
