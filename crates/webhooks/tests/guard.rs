//! Creation-time URL checks, including resolution. Only literal addresses and `localhost`
//! (answered from /etc/hosts) are used, so no test sends a packet anywhere.

use webhooks::guard::{UrlError, UrlPolicy};

#[tokio::test]
async fn non_public_targets_are_not_allowed() {
    for raw in [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[64:ff9b::a00:1]/hook",
        "http://localhost/hook",
        "http://localhost:8080/hook",
        "http://LocalHost/hook",
        "https://0.0.0.0/",
        "http://100.64.1.1/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        // Numeric spellings the URL parser normalises to 127.0.0.1.
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://0177.0.0.1/",
    ] {
        assert_eq!(
            UrlPolicy::PUBLIC_ONLY.validate(raw).await,
            Err(UrlError::NotAllowed),
            "{raw}"
        );
    }
}

#[tokio::test]
async fn malformed_targets_are_invalid() {
    for raw in [
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
        "https://user:pass@93.184.216.34/hook",
        "ws://93.184.216.34/",
        "http//93.184.216.34/",
        "93.184.216.34",
    ] {
        assert_eq!(
            UrlPolicy::PUBLIC_ONLY.validate(raw).await,
            Err(UrlError::InvalidUrl),
            "{raw}"
        );
        // Syntax errors stay errors even when private addresses are allowed.
        assert_eq!(
            UrlPolicy::ALLOW_PRIVATE.validate(raw).await,
            Err(UrlError::InvalidUrl),
            "{raw}"
        );
    }
}

#[tokio::test]
async fn public_literals_are_accepted_without_connecting() {
    for raw in [
        "http://93.184.216.34/hook",
        "https://93.184.216.34:8443/hooks?token=abc",
        "https://[2606:4700:4700::1111]/hook",
        "http://[::ffff:93.184.216.34]/",
    ] {
        let url = UrlPolicy::PUBLIC_ONLY.validate(raw).await.unwrap();
        assert!(url.host().is_some(), "{raw}");
    }
}

#[tokio::test]
async fn allow_private_accepts_loopback_and_private_targets() {
    for raw in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.1/",
        "http://[::1]/",
    ] {
        assert!(
            UrlPolicy::ALLOW_PRIVATE.validate(raw).await.is_ok(),
            "{raw}"
        );
    }
}
