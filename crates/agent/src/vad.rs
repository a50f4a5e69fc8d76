//! Voice activity detection with earshot (pure Rust, weights compiled in). Earshot scores
//! 256-sample (16 ms) windows at 16 kHz; calls carry 320-sample (20 ms) frames, so samples are
//! carried over between frames and a frame counts as speech if any window finished in it scored
//! at or above the threshold.

use earshot::Detector;

const WINDOW: usize = 256;

pub struct Vad {
    detector: Box<Detector>,
    carry: Vec<i16>,
    threshold: f32,
    last: bool,
}

impl Vad {
    pub fn new(threshold: f32) -> Self {
        Self {
            detector: Detector::default_boxed(),
            carry: Vec::with_capacity(2 * WINDOW),
            threshold,
            last: false,
        }
    }

    /// Whether the 20 ms frame holds speech.
    pub fn is_speech(&mut self, frame: &[i16]) -> bool {
        self.carry.extend_from_slice(frame);
        let mut windows = 0;
        let mut speech = false;
        while self.carry.len() >= (windows + 1) * WINDOW {
            let w = &self.carry[windows * WINDOW..(windows + 1) * WINDOW];
            speech |= self.detector.predict_i16(w) >= self.threshold;
            windows += 1;
        }
        self.carry.drain(..windows * WINDOW);
        // A frame that completed no window (never two in a row at 320/256) keeps the last verdict.
        if windows > 0 {
            self.last = speech;
        }
        self.last
    }
}

impl Default for Vad {
    fn default() -> Self {
        Self::new(0.5)
    }
}
