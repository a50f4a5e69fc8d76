//! What the answering-machine detector alone makes of a caller's recording (16 kHz mono) played
//! `lead_ms` after the answer, frame by frame with the call's VAD, as the conversation feeds it:
//! every verdict and revision. Tests use it to show that their caller is the case they claim to
//! be. Shared by the agent's tests and the binary's (`#[path]`-included there).
#![allow(dead_code)]

use agent::amd::{Amd, Cue};
use agent::vad::Vad;
use agent::{AmdConfig, Timing};
use domain::call::AnsweredBy;

const FRAME: usize = 320;

pub fn verdicts(audio: &[i16], lead_ms: u64) -> Vec<(AnsweredBy, Cue)> {
    verdicts_with(audio, lead_ms, AmdConfig::default())
}

/// [`verdicts`] with the detector set as `cfg`.
pub fn verdicts_with(audio: &[i16], lead_ms: u64, cfg: AmdConfig) -> Vec<(AnsweredBy, Cue)> {
    let mut vad = Vad::new(Timing::default().vad_threshold);
    let mut amd = Amd::new(cfg, 20);
    let mut line = vec![0i16; (lead_ms * 16) as usize];
    line.extend_from_slice(audio);
    // Four seconds of the caller waiting for an answer.
    line.resize(line.len().next_multiple_of(FRAME) + 4 * 16_000, 0);
    line.chunks_exact(FRAME)
        .zip(1u64..)
        .filter_map(|(frame, n)| {
            let speech = vad.is_speech(frame);
            amd.frame(n * 20, frame, speech, false)
        })
        .collect()
}
