//! The pocketsphinx sidecar pool against the real engine: an utterance streamed frame by frame
//! is recognised with the expected phrases, a killed sidecar is replaced, a stuck one is
//! replaced and its utterance replayed, and two calls' utterances are recognised at once.

mod common;

use agent::{PocketSphinx, PocketSphinxConfig, SpeechToText, Transcript};
use common::voice::heard_on_the_phone;
use std::time::{Duration, Instant};

fn phrases() -> Vec<String> {
    ["yes", "yeah", "sure", "okay", "no", "cannot", "can't"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn pool(sidecars: usize, timeout: Duration) -> PocketSphinx {
    PocketSphinx::new(PocketSphinxConfig {
        sidecars,
        timeout,
        ..Default::default()
    })
}

/// The caller's sentence followed by the end-of-turn silence, as the runtime would feed it.
fn utterance(dir: &std::path::Path) -> Vec<i16> {
    let mut audio = heard_on_the_phone("Yes, I can pay by Friday.", dir);
    audio.extend(std::iter::repeat_n(0, 8000));
    audio
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn understood(heard: &Transcript) {
    let text = heard.text.as_str();
    assert!(
        text.starts_with("yes") || text.starts_with("yeah"),
        "heard {text:?}"
    );
    assert!(text.contains("friday"), "heard {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_utterance_is_recognised_and_only_finalisation_is_left_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let audio = utterance(dir.path());
    let stt = pool(1, Duration::from_secs(10));
    stt.warm_up().await.unwrap();
    let stream = stt.stream(&phrases()).expect("pocketsphinx streams");
    // Real time: one 20 ms frame per tick, as a call delivers it.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in audio.chunks(320) {
        tick.tick().await;
        stream.push(frame);
    }
    let started = Instant::now();
    let text = stream.finish().await.unwrap();
    let finalise = started.elapsed();
    understood(&text);
    eprintln!("finalisation took {finalise:?}: {text:?}");
    // The same words from the whole-utterance entry point.
    understood(&stt.transcribe(&audio, &phrases()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let audio = utterance(dir.path());
    let stt = pool(1, Duration::from_secs(10));
    stt.warm_up().await.unwrap();
    let pids = stt.idle_pids();
    assert_eq!(pids.len(), 1);
    signal(pids[0], "-KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    understood(&stt.transcribe(&audio, &phrases()).await.unwrap());
    let now = stt.idle_pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sidecar_is_replaced_and_the_utterance_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let audio = utterance(dir.path());
    let stt = pool(1, Duration::from_secs(2));
    stt.warm_up().await.unwrap();
    let stuck = stt.idle_pids()[0];
    let stream = stt.stream(&phrases()).unwrap();
    let (first, rest) = audio.split_at(audio.len() / 2);
    stream.push(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Frozen mid-utterance: it reads nothing more and never answers.
    signal(stuck, "-STOP");
    stream.push(rest);
    let started = Instant::now();
    let text = stream.finish().await.unwrap();
    understood(&text);
    assert!(started.elapsed() < Duration::from_secs(20));
    // The frozen process is gone (killed when it was dropped), a fresh one serves.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stt.idle_pids().contains(&stuck));
    // Gone, or a zombie waiting to be reaped: either way no longer a process that runs.
    let state = std::fs::read_to_string(format!("/proc/{stuck}/stat")).unwrap_or_default();
    let state = state.rsplit(')').next().unwrap_or("").trim_start();
    assert!(
        state.is_empty() || state.starts_with('Z'),
        "the stuck sidecar {stuck} is still there: {state}"
    );
    understood(&stt.transcribe(&audio, &phrases()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_are_recognised_at_once_and_a_cancelled_one_frees_its_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let audio = utterance(dir.path());
    let stt = pool(2, Duration::from_secs(10));
    stt.warm_up().await.unwrap();
    assert_eq!(stt.idle_pids().len(), 2);
    // A backchannel that is dropped: its stream is cancelled and its sidecar comes back.
    let dropped = stt.stream(&phrases()).unwrap();
    dropped.push(&audio[..4800]);
    drop(dropped);
    let a = stt.stream(&phrases()).unwrap();
    let b = stt.stream(&phrases()).unwrap();
    for frame in audio.chunks(320) {
        a.push(frame);
        b.push(frame);
    }
    let (ta, tb) = tokio::join!(a.finish(), b.finish());
    understood(&ta.unwrap());
    understood(&tb.unwrap());
    // A sidecar goes back to the pool just after it answers: wait for it, generously (a loaded
    // machine can be slow to schedule that task), rather than catch it in between.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stt.idle_pids().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stt.idle_pids().len(), 2);
}
