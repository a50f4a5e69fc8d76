//! Transfer to a person through the real binary: `outdial serve`, a call placed through the HTTP
//! API, SIPp on loopback as the trunk. The callee (a piper recording streamed as RTP) says yes
//! to "would you like to speak to our billing team?"; the flow's route hands the call to the
//! agent's `billing` target. The trunk takes the REFER and reports the target answering; or
//! refuses it, and outdial dials the target on the same trunk itself: a person who answers and
//! talks (bridged, audio both ways), or a busy line (the caller is told and the flow goes on).

mod support;
#[path = "../../agent/tests/common/voice.rs"]
mod voice;

use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{transcript_lines, Api, Db, Service, Sipp};

const TARGET: &str = "+918045000000";
const SAY: &str = "Connecting you to our billing team.";
const AFTER: &str = "Can I help with anything else?";
/// The callee's tone after the bridge, and the target's.
const CALLEE_HZ: f64 = 440.0;
const TARGET_HZ: f64 = 1200.0;

fn agent() -> Value {
    json!({
      "first_message": "Hello Rahul, this is Asha from Acme.",
      "transfer": { "targets": { "billing": TARGET }, "say": SAY },
      "stages": [
        { "id": "stage_ask", "say": "Would you like to speak to our billing team?",
          "routes": [
            { "when_any": ["yes", "yeah", "sure", "okay"], "set": { "intent": "billing" },
              "transfer_to": "billing", "next": "stage_after" }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } },
        { "id": "stage_after", "say": AFTER }
      ],
      "results": [ { "name": "intent" } ],
      // A misheard "yes" ends the call soon, so a failure shows its transcript quickly.
      "max_duration_seconds": 60
    })
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

fn sox(args: &[&str]) {
    let st = Command::new("sox").args(args).status().expect("sox");
    assert!(st.success(), "sox {args:?}");
}

/// The callee's `caller.ul` in `dir`: "Yes, please." in the piper voice, then (`tone`) 5 s of
/// quiet (the agent's hand-over) and 8 s of a 440 Hz tone (the callee talking to the target,
/// who answers about 4 s after "yes" and talks for 12 s).
fn record(dir: &Path, tone: bool) {
    let speech = dir.join("speech.wav");
    voice::speak("Yes, please.", &speech);
    let all = dir.join("caller.wav");
    if tone {
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let (gap, hum) = (dir.join("gap.wav"), dir.join("tone.wav"));
        let fmt = ["-r", "22050", "-c", "1", "-b", "16"];
        sox(&[&["-n"][..], &fmt, &[&s(&gap), "trim", "0", "5"]].concat());
        sox(&[
            &["-n"][..],
            &fmt,
            &[&s(&hum), "synth", "8", "sine", "440", "vol", "0.3"],
        ]
        .concat());
        sox(&[&s(&speech), &s(&gap), &s(&hum), &s(&all)]);
    } else {
        std::fs::copy(&speech, &all).unwrap();
    }
    voice::to_mulaw(&all, &dir.join("caller.ul"));
}

struct Transferred {
    conversation: Value,
    recording: media::wav::Wav,
    sipp: Sipp,
    /// SIPp's trace is in it.
    _dir: tempfile::TempDir,
}

/// One call through the service (with `env` added to its settings) to SIPp running
/// `scenario_file` (with `sipp_args`).
async fn call(
    db: &Db,
    scenario_file: &str,
    tone: bool,
    sipp_args: &[&str],
    env: &[(&str, &str)],
) -> Transferred {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), tone);
    let key = Service::create_tenant_in(dir.path(), db);
    let mut env = env.to_vec();
    env.push(("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30"));
    let svc = Service::start_with(dir.path(), db, &env);
    let sipp = Sipp::run_with(
        &scenario(scenario_file),
        false,
        2,
        3500,
        dir.path(),
        sipp_args,
    );
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, agent()).await;
    let location = api.call(agent, "+919876543210").await;
    let conversation = api.wait_terminal(&location, Duration::from_secs(90)).await;
    let url = conversation["recording_url"]
        .as_str()
        .expect("a recording")
        .to_string();
    let wav = api
        .http
        .get(&url)
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), 200);
    let recording = media::wav::read(&wav.bytes().await.unwrap()).unwrap();
    Transferred {
        conversation,
        recording,
        sipp,
        _dir: dir,
    }
}

fn agent_said(c: &Value) -> Vec<String> {
    transcript_lines(c)
        .into_iter()
        .filter(|(role, _)| role == "agent")
        .map(|(_, m)| m)
        .collect()
}

/// Seconds of `samples` (20 ms frames) in which a `hz` tone carries at least 30 % of the frame's
/// energy (two tones mixed at similar levels both count).
fn tone_seconds(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let n = (rate / 50) as usize;
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let frames = samples.chunks_exact(n).filter(|f| {
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut energy = 0.0;
        for &x in f.iter() {
            let x = f64::from(x);
            energy += x * x;
            let s0 = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let rms = (energy / n as f64).sqrt();
        // A pure tone puts energy * n / 2 at its bin.
        rms > 300.0 && power > 0.3 * energy * n as f64 / 2.0
    });
    frames.count() as f64 * 0.02
}

fn sent_to(trace: &Path, method: &str) -> String {
    let log = std::fs::read_to_string(trace).unwrap();
    log.split("----------------------------------------------- ")
        .find(|m| m.contains(&format!("{method} sip:")))
        .unwrap_or_else(|| panic!("no {method} in SIPp's trace"))
        .to_string()
}

async fn the_trunk_takes_the_refer(db: Db) {
    let t = call(&db, "transfer_refer.xml", false, &[], &[]).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    let transfer = &c["transfer"];
    assert_eq!(transfer["target"], "billing", "{c}");
    assert_eq!(transfer["number"], TARGET);
    assert_eq!(transfer["method"], "refer");
    assert_eq!(transfer["status"], "connected");
    assert!(transfer["at"].as_i64().unwrap() >= c["start_timestamp"].as_i64().unwrap());
    assert_eq!(c["results"]["intent"], "billing");
    let said = agent_said(c);
    assert_eq!(said.last().map(String::as_str), Some(SAY), "{c}");
    // The REFER names the configured number at the trunk; the far end, not outdial, dialled it.
    let refer = sent_to(&t.sipp.trace, "REFER");
    assert!(
        refer.contains(&format!("Refer-To: <sip:{TARGET}@127.0.0.1")),
        "{refer}"
    );
    let invites = t.sipp.invites_per_number();
    assert_eq!(invites.get(TARGET), None, "{invites:?}");
    // We left the call once the target answered (RFC 3515): our BYE is in the trace.
    sent_to(&t.sipp.trace, "BYE");
    assert!(!t.recording.samples.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_accepted_and_notified_200_is_a_connected_transfer_on_sqlite() {
    the_trunk_takes_the_refer(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_accepted_and_notified_200_is_a_connected_transfer_on_postgres() {
    let (db, _pg) = Db::postgres();
    the_trunk_takes_the_refer(db).await;
}

/// The transfer target's phone: an RTP socket that plays a 1200 Hz tone back to whoever sends
/// it audio, and keeps what it hears (8 kHz).
struct TargetPhone {
    port: u16,
    stop: Arc<AtomicBool>,
    heard: std::thread::JoinHandle<Vec<i16>>,
}

impl TargetPhone {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let heard = std::thread::spawn(move || {
            let mut heard = Vec::new();
            let mut peer: Option<SocketAddr> = None;
            let mut buf = [0u8; 2048];
            let (mut seq, mut ts, mut phase) = (0u16, 0u32, 0f64);
            let mut next_send = Instant::now();
            let give_up = Instant::now() + Duration::from_secs(120);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < give_up {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    if len > 12 && buf[1] & 0x7f == 0 {
                        media::g711::ulaw_decode_slice(&buf[12..len], &mut heard);
                    }
                    peer.get_or_insert(from);
                }
                if let Some(peer) = peer.filter(|_| Instant::now() >= next_send) {
                    next_send += Duration::from_millis(20);
                    let tone: Vec<i16> = (0..160)
                        .map(|_| {
                            phase += 2.0 * std::f64::consts::PI * TARGET_HZ / 8000.0;
                            (phase.sin() * 8000.0) as i16
                        })
                        .collect();
                    let mut packet = vec![0x80, 0];
                    packet.extend(seq.to_be_bytes());
                    packet.extend(ts.to_be_bytes());
                    packet.extend(0x5eed_u32.to_be_bytes());
                    media::g711::ulaw_encode_slice(&tone, &mut packet);
                    let _ = socket.send_to(&packet, peer);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                }
            }
            heard
        });
        Self { port, stop, heard }
    }

    fn heard(self) -> Vec<i16> {
        self.stop.store(true, Ordering::Relaxed);
        self.heard.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_refused_501_dials_the_target_and_bridges_audio_both_ways() {
    let phone = TargetPhone::start();
    let port = phone.port.to_string();
    let t = call(
        &Db::sqlite(),
        "transfer_bridge.xml",
        true,
        &["-set", "target_rtp_port", &port],
        &[],
    )
    .await;
    let heard = phone.heard();
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    let transfer = &c["transfer"];
    assert_eq!(transfer["target"], "billing", "{c}");
    assert_eq!(transfer["number"], TARGET);
    assert_eq!(transfer["method"], "bridge");
    assert_eq!(transfer["status"], "connected");
    assert_eq!(agent_said(c).last().map(String::as_str), Some(SAY), "{c}");
    // outdial dialled the configured number on the same trunk, as the agent's number.
    let invites = t.sipp.invites_per_number();
    assert_eq!(invites.get(TARGET), Some(&1), "{invites:?}");
    assert_eq!(invites.get("+919876543210"), Some(&1), "{invites:?}");
    // The target heard the callee's tone (8 s of it, all while bridged)...
    let callee_at_target = tone_seconds(&heard, 8000, CALLEE_HZ);
    assert!(
        callee_at_target >= 5.0,
        "the target heard {callee_at_target} s of the callee's tone"
    );
    // ...and the callee was sent the target's (12 s of talk): the recording (both legs) has it.
    // The callee never plays 1200 Hz itself.
    let target_in_recording =
        tone_seconds(&t.recording.samples, t.recording.sample_rate, TARGET_HZ);
    assert!(
        target_in_recording >= 8.0,
        "the recording has {target_in_recording} s of the target's tone"
    );
    let callee_in_recording =
        tone_seconds(&t.recording.samples, t.recording.sample_rate, CALLEE_HZ);
    assert!(callee_in_recording >= 5.0, "{callee_in_recording}");
    eprintln!(
        "bridge: the target heard {callee_at_target:.2} s of the callee's tone; the recording \
         has {target_in_recording:.2} s of the target's and {callee_in_recording:.2} s of the callee's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_target_fails_the_transfer_and_the_flow_goes_on() {
    let t = call(&Db::sqlite(), "transfer_busy.xml", false, &[], &[]).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    let transfer = &c["transfer"];
    assert_eq!(transfer["target"], "billing", "{c}");
    assert_eq!(transfer["method"], "bridge");
    assert_eq!(transfer["status"], "failed");
    let invites = t.sipp.invites_per_number();
    assert_eq!(invites.get(TARGET), Some(&1), "{invites:?}");
    // The caller heard the hand-over, that it failed, and the flow's next step.
    let said = agent_said(c);
    let at = said
        .iter()
        .position(|l| l == SAY)
        .expect("the hand-over line");
    assert_eq!(
        &said[at + 1..],
        [agent::TRANSFER_FAILED_LINE.to_string(), AFTER.to_string()],
        "{c}"
    );
}

/// A trunk that accepts the REFER but never reports the target answering: after the service's
/// `OUTDIAL_TRANSFER_TIMEOUT_SECONDS` (2 here; the callee stays 12 s, so the 15 s default would
/// never get there) outdial dials the target itself; it is busy, so the transfer fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_final_notify_in_time_falls_back_to_the_bridge() {
    let t = call(
        &Db::sqlite(),
        "transfer_no_final_notify.xml",
        false,
        &[],
        &[("OUTDIAL_TRANSFER_TIMEOUT_SECONDS", "2")],
    )
    .await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["transfer"]["method"], "bridge", "{c}");
    assert_eq!(c["transfer"]["status"], "failed");
    sent_to(&t.sipp.trace, "REFER");
    let invites = t.sipp.invites_per_number();
    assert_eq!(invites.get(TARGET), Some(&1), "{invites:?}");
    let said = agent_said(c);
    let at = said
        .iter()
        .position(|l| l == SAY)
        .expect("the hand-over line");
    assert_eq!(
        said.get(at + 1).map(String::as_str),
        Some(agent::TRANSFER_FAILED_LINE)
    );
}
