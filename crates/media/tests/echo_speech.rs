//! The echo gate on speech it was not tuned on: espeak-ng voices (Debian package `espeak-ng`;
//! these tests fail rather than skip when it is missing) instead of the unit tests' shaped
//! noise, the echo through G.711 at a delay and level of a handset.

use media::echo::{EchoConfig, EchoGate};
use media::{g711, sinc_resample};
use std::process::Command;

const FRAME: usize = 320; // 20 ms at 16 kHz

fn speak(voice: &str, text: &str) -> Vec<i16> {
    let out = Command::new("espeak-ng")
        .args(["-v", voice, "--stdout", text])
        .output()
        .unwrap_or_else(|e| panic!("cannot run espeak-ng ({e}); apt-get install -y espeak-ng"));
    assert!(out.status.success(), "espeak-ng failed");
    // espeak-ng on a pipe cannot fill in the RIFF sizes: read the format, take what follows.
    let bytes = out.stdout;
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let samples: Vec<i16> = bytes[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    sinc_resample::resample(&samples, rate, 16_000)
}

fn echo_of(far: &[i16], delay_ms: usize, gain: f32) -> Vec<i16> {
    let delay = delay_ms * 16;
    let mut out = vec![0i16; far.len()];
    for i in delay..far.len() {
        let s = (f32::from(far[i - delay]) * gain) as i16;
        out[i] = g711::ulaw_decode(g711::ulaw_encode(s));
    }
    out
}

fn energy(x: &[i16], f: usize) -> f32 {
    x.get(f * FRAME..(f + 1) * FRAME)
        .map(|s| s.iter().map(|&v| f32::from(v).powi(2)).sum())
        .unwrap_or(0.0)
}

/// Per-frame verdicts, the driver keeping 3 frames queued ahead of playout.
fn run(far: &[i16], near: &[i16]) -> Vec<bool> {
    let mut gate = EchoGate::new(EchoConfig::default(), 20);
    let frames = near.len() / FRAME;
    let far_frame = |f: usize| {
        let mut v = far.get(f * FRAME..(f + 1) * FRAME).unwrap_or(&[]).to_vec();
        v.resize(FRAME, 0);
        v
    };
    for f in 0..3 {
        gate.queue_far(&far_frame(f));
    }
    (0..frames)
        .map(|f| {
            gate.queue_far(&far_frame(f + 3));
            gate.near(&near[f * FRAME..(f + 1) * FRAME])
        })
        .collect()
}

#[test]
fn an_echoed_espeak_opening_is_echo_and_a_caller_over_it_is_not() {
    let agent = speak(
        "en-us",
        "Hello Rahul, this is Asha from Acme about your invoice. Can you pay it by Friday?",
    );
    let echo = echo_of(&agent, 140, 0.5);
    let mut near = echo.clone();
    // The caller, another voice, starts 2.5 s in and talks over the rest of the agent's line.
    let caller = speak(
        "en-gb+f3",
        "No, I can not pay it this week, call me next month.",
    );
    let start = 40_000;
    near.resize(near.len().max(start + caller.len()), 0);
    for (i, s) in caller.iter().enumerate() {
        near[start + i] = near[start + i].saturating_add(*s);
    }
    let verdicts = run(&agent, &near);
    let first_caller_frame = start / FRAME;
    // The echo alone, once the path is learned (0.6 s in).
    let echo_only: Vec<usize> = (30..first_caller_frame)
        .filter(|&f| energy(&echo, f) > 1e6)
        .collect();
    let missed = echo_only.iter().filter(|&&f| !verdicts[f]).count();
    assert!(echo_only.len() > 40, "{} echo frames", echo_only.len());
    assert!(
        missed * 10 <= echo_only.len(),
        "{missed} of {} echo frames taken for the caller",
        echo_only.len()
    );
    // The caller's frames that are at least 6 dB over the echo under them count as the caller.
    let talking: Vec<usize> = (first_caller_frame..verdicts.len())
        .filter(|&f| {
            let c = energy(&caller, f - first_caller_frame);
            c > 1e6 && c > 4.0 * energy(&echo, f)
        })
        .collect();
    let taken_for_echo = talking.iter().filter(|&&f| verdicts[f]).count();
    assert!(talking.len() > 40, "{} caller frames", talking.len());
    assert!(
        taken_for_echo * 10 <= talking.len(),
        "{taken_for_echo} of {} caller frames taken for echo",
        talking.len()
    );
}
