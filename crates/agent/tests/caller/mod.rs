//! A scripted caller on a paced test line.

use domain::telephony::FRAME_SAMPLES;

/// The caller's 20 ms frame at line tick `tick` when `speech` starts at tick `from`: silence
/// before it starts and after it ends, the last frame of speech padded with silence.
pub fn frame_at(speech: &[i16], tick: usize, from: usize) -> Vec<i16> {
    let start = tick.saturating_sub(from) * FRAME_SAMPLES;
    let mut frame = if tick >= from && start < speech.len() {
        speech[start..(start + FRAME_SAMPLES).min(speech.len())].to_vec()
    } else {
        Vec::new()
    };
    frame.resize(FRAME_SAMPLES, 0);
    frame
}
