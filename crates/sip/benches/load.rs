//! Load bench: N simultaneous calls through `sipp -sn uas -rtp_echo`, each streaming audio both
//! ways for a fixed time, reporting our CPU per call, late and lost packets, and SIPp's CPU.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-sip cargo bench -p sip --bench load -- --calls 500 --seconds 20
//! cargo bench -p sip --bench load -- --calls 500 --seconds 20 --proxy --transport tls
//! cargo bench -p sip --bench load -- --calls 500 --seconds 20 --proxy --transport tls --srtp
//! ```
//!
//! `--proxy` puts Kamailio (digest auth, Record-Route) between us and SIPp, as a carrier's edge
//! is; `--transport udp|tcp|tls` is how we reach it (SIPp has no TLS, so TCP and TLS need the
//! proxy; media is RTP straight to SIPp either way).
//!
//! `--srtp` makes the calls `srtp: required`. SIPp 3.6 has no SRTP, so its callee
//! (`benches/uas_srtp.xml`) answers RTP/SAVP with our own offered key as its key, and
//! `-rtp_echo` sends our SRTP packets back verbatim: each one is then authenticated and
//! decrypted by us under "the far end's" key like any peer's. Why not a reflector that decrypts
//! and re-encrypts with the media crate: in this process its crypto would be counted as ours,
//! and in another it would be one more loaded process on the same cores; SIPp's echo costs
//! the same with or without SRTP, so the two runs differ only by our side's work. The baresip
//! test is where SRTP meets an independent implementation.
//!
//! "Late" is a packet sent more than 5 ms after its slot on the 20 ms schedule.

use domain::telephony::{CallEvent, DialRequest, LiveCall, Telephony, Transport, TrunkTarget};
use domain::{CallStatus, ConversationId, TraceId, E164};
use sip::{SipConfig, SipTelephony};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    calls: usize,
    seconds: u64,
    /// Calls started per second, so SIPp and we are not measured on an INVITE storm.
    rate: usize,
    proxy: bool,
    transport: Transport,
    srtp: bool,
}

fn args() -> Args {
    let mut a = Args {
        calls: 100,
        seconds: 20,
        rate: 200,
        proxy: false,
        transport: Transport::Udp,
        srtp: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        if argv[i] == "--proxy" {
            a.proxy = true;
            i += 1;
            continue;
        }
        if argv[i] == "--srtp" {
            a.srtp = true;
            i += 1;
            continue;
        }
        if argv[i] == "--transport" {
            a.transport = argv
                .get(i + 1)
                .and_then(|t| Transport::parse(t))
                .expect("--transport udp|tcp|tls");
            i += 2;
            continue;
        }
        let value = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), value) {
            ("--calls", Some(v)) => a.calls = v,
            ("--seconds", Some(v)) => a.seconds = v as u64,
            ("--rate", Some(v)) => a.rate = v.max(1),
            // `cargo bench` passes --bench; anything unknown is ignored.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// utime + stime of a process, in seconds, from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat are at indices 11 and 12 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tone() -> Vec<Vec<i16>> {
    // One second of 1 kHz at 16 kHz, in 20 ms frames; 1 kHz divides 20 ms evenly.
    (0..50)
        .map(|f| {
            (0..320)
                .map(|i| {
                    let t = (f * 320 + i) as f64 / 16_000.0;
                    (6_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16
                })
                .collect()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args = args();
    let sip_port = free_port();
    let media_port = free_port();
    let scenario = if args.srtp {
        let xml = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/uas_srtp.xml");
        ["-sf", xml]
    } else {
        ["-sn", "uas"]
    };
    let mut sipp = Command::new("/usr/bin/sipp")
        .args(scenario)
        .args(["-rtp_echo", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
        .args(["-m", &args.calls.to_string(), "-nostdin"])
        .args(["-timeout", &format!("{}s", args.seconds + 120)])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp (apt-get install sip-tester)");
    let sipp_pid = sipp.id().to_string();
    while UdpSocket::bind(("127.0.0.1", sip_port)).is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(
        args.proxy || args.transport == Transport::Udp,
        "SIPp speaks no TLS here: TCP and TLS go --proxy"
    );
    let proxy = args.proxy.then(|| {
        let callee = format!("sip:127.0.0.1:{sip_port}");
        match args.transport {
            Transport::Tls => testkit::kamailio::Kamailio::start_tls(&callee, "s3cret"),
            _ => testkit::kamailio::Kamailio::start(&callee, "s3cret"),
        }
    });
    let (uri, credentials) = match &proxy {
        Some(p) if args.transport == Transport::Tls => (p.sips_uri(), true),
        Some(p) => (p.uri(), true),
        None => (format!("sip:127.0.0.1:{sip_port}"), false),
    };
    let telephony = std::sync::Arc::new(
        SipTelephony::bind(SipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rtp_ports: 30_000..=49_999,
            tls_ca: proxy
                .as_ref()
                .filter(|_| args.transport == Transport::Tls)
                .map(|p| p.ca()),
            ..SipConfig::default()
        })
        .await
        .expect("bind"),
    );
    let frames = std::sync::Arc::new(tone());

    let our_cpu0 = cpu_seconds("self");
    let sipp_cpu0 = cpu_seconds(&sipp_pid);
    let started = Instant::now();
    let mut calls = Vec::with_capacity(args.calls);
    let gap = Duration::from_secs_f64(1.0 / args.rate as f64);
    for _ in 0..args.calls {
        let request = DialRequest {
            conversation_id: ConversationId::first(domain::Millis::now()),
            trace_id: TraceId::new(),
            from: E164::parse("+14155550100").unwrap(),
            to: E164::parse("+14155550199").unwrap(),
            trunk: TrunkTarget {
                uri: uri.clone(),
                username: credentials.then(|| "outdial".to_string()),
                password: credentials.then(|| "s3cret".to_string()),
                transport: args.transport,
                register: false,
                srtp: if args.srtp {
                    domain::telephony::Srtp::Required
                } else {
                    domain::telephony::Srtp::Off
                },
            },
            ring_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(args.seconds),
        };
        let LiveCall {
            mut events,
            control,
        } = telephony.dial(request).await.expect("dial");
        let frames = frames.clone();
        calls.push(tokio::spawn(async move {
            // Held, not used: dropping it would hang the call up.
            let _control = control;
            let mut feeder = None;
            let mut drain = None;
            loop {
                match events.recv().await {
                    Some(CallEvent::Answered { media, .. }) => {
                        let out = media.outbound;
                        let frames = frames.clone();
                        feeder = Some(tokio::spawn(async move {
                            for frame in frames.iter().cycle() {
                                if out.send(frame.clone()).await.is_err() {
                                    break;
                                }
                            }
                        }));
                        let mut inbound = media.inbound;
                        drain = Some(tokio::spawn(async move {
                            while inbound.recv().await.is_some() {}
                        }));
                    }
                    Some(CallEvent::Ended(end)) => {
                        if let Some(f) = feeder {
                            f.abort();
                        }
                        if let Some(d) = drain {
                            d.abort();
                        }
                        return end;
                    }
                    Some(_) => {}
                    None => panic!("events closed without Ended"),
                }
            }
        }));
        tokio::time::sleep(gap).await;
    }
    let mut completed = 0;
    let mut failed = Vec::new();
    for call in calls {
        let end = call.await.expect("call task");
        if end.status == CallStatus::Completed {
            completed += 1;
        } else {
            failed.push(format!("{:?} {:?}", end.status, end.failure_reason));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let our_cpu = cpu_seconds("self") - our_cpu0;
    let sipp_cpu = cpu_seconds(&sipp_pid) - sipp_cpu0;
    let stats = telephony.media_stats();
    let _ = sipp.kill();
    let _ = sipp.wait();

    let n = args.calls as f64;
    let late_pct = 100.0 * stats.packets_late as f64 / stats.packets_sent.max(1) as f64;
    let shortfall = stats.packets_sent.saturating_sub(stats.packets_received);
    println!(
        "signalling       {}{}",
        args.transport,
        if args.proxy {
            " through Kamailio"
        } else {
            " straight to SIPp"
        }
    );
    println!(
        "media            {}",
        if args.srtp {
            "SRTP (AES_CM_128_HMAC_SHA1_80), echoed by SIPp"
        } else {
            "RTP, echoed by SIPp"
        }
    );
    println!("calls            {} ({} completed)", args.calls, completed);
    for f in failed.iter().take(5) {
        println!("  failed: {f}");
    }
    println!("call length      {} s, wall {:.1} s", args.seconds, wall);
    println!(
        "our CPU          {:.2} s total, {:.1} ms per call, {:.1}% of one core on average",
        our_cpu,
        1000.0 * our_cpu / n,
        100.0 * our_cpu / wall
    );
    println!(
        "our CPU per call-second {:.3} ms",
        1000.0 * our_cpu / (n * args.seconds as f64)
    );
    println!(
        "SIPp CPU         {:.2} s total, {:.1}% of one core on average",
        sipp_cpu,
        100.0 * sipp_cpu / wall
    );
    println!(
        "packets sent     {}, late (>5 ms) {} = {:.3}%",
        stats.packets_sent, stats.packets_late, late_pct
    );
    println!(
        "packets received {}, jitter-buffer lost {}, echo shortfall {} ({:.3}%)",
        stats.packets_received,
        stats.packets_lost,
        shortfall,
        100.0 * shortfall as f64 / stats.packets_sent.max(1) as f64
    );
    if args.srtp {
        println!(
            "SRTP refused     {} inbound packets (failed authentication or replayed)",
            stats.packets_refused
        );
    }
    println!(
        "verdict          {}",
        if late_pct < 1.0 && stats.packets_refused == 0 {
            "PASS (<1% late)"
        } else if stats.packets_refused > 0 {
            "FAIL (SRTP packets refused)"
        } else {
            "FAIL (>=1% late)"
        }
    );
}
