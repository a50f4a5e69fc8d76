//! Per-frame cost of the hot media paths: `cargo bench --bench frame`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use media::jitter::{JitterBuffer, JitterConfig};
use media::resample::{Downsampler, Upsampler};
use media::rtp::RtpPacket;
use media::sender::{RtpSender, SenderConfig};
use media::{g711, FRAME_DURATION, FRAME_SAMPLES};

fn speech_like_frame(len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| (8_000.0 * (n as f64 * 0.07).sin() + 3_000.0 * (n as f64 * 0.41).sin()) as i16)
        .collect()
}

fn encode_and_packetise(c: &mut Criterion) {
    let pcm = speech_like_frame(FRAME_SAMPLES);
    let mut sender = RtpSender::new(SenderConfig {
        ssrc: 1,
        initial_sequence: 2,
        initial_timestamp: 3,
        payload_type: 0,
    });
    let mut payload = Vec::with_capacity(FRAME_SAMPLES);
    let mut datagram = [0u8; 1500];
    let mut frame = 0u64;
    c.bench_function("encode PCMU + packetise 20 ms", |b| {
        b.iter(|| {
            payload.clear();
            g711::ulaw_encode_slice(black_box(&pcm), &mut payload);
            let packet = sender.audio(frame, &payload).expect("frames increase");
            frame += 1;
            black_box(packet.write(&mut datagram).expect("fits in MTU"))
        })
    });
}

fn jitter_push_pop(c: &mut Criterion) {
    let payload = [0xFFu8; FRAME_SAMPLES];
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let start = Instant::now();
    let mut seq = 0u16;
    let mut now = start;
    c.bench_function("jitter push + pop 20 ms", |b| {
        b.iter(|| {
            let packet = RtpPacket::new(0, seq, u32::from(seq) * 160, 7, false, &payload);
            jb.push(black_box(&packet), now);
            let out = jb.pop(now);
            seq = seq.wrapping_add(1);
            now += FRAME_DURATION;
            black_box(out)
        })
    });
}

fn resample(c: &mut Criterion) {
    let narrow = speech_like_frame(FRAME_SAMPLES);
    let wide = speech_like_frame(2 * FRAME_SAMPLES);
    let mut up = Upsampler::new();
    let mut down = Downsampler::new();
    let mut out = Vec::with_capacity(2 * FRAME_SAMPLES);
    c.bench_function("resample 8k->16k 20 ms", |b| {
        b.iter(|| {
            out.clear();
            up.process(black_box(&narrow), &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("resample 16k->8k 20 ms", |b| {
        b.iter(|| {
            out.clear();
            down.process(black_box(&wide), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, encode_and_packetise, jitter_push_pop, resample);
criterion_main!(benches);
