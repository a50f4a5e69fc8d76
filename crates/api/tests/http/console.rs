//! The console's sessions and forms over real HTTP: the key is exchanged for an HttpOnly,
//! SameSite=Strict cookie, forms need the session's token, sign-out and revocation end the
//! session on the server, and every answer carries the Content-Security-Policy.

use crate::harness::TestApp;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, StatusCode};

fn client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value a `Set-Cookie` header gives `name`, and the whole header.
fn set_cookie(headers: &HeaderMap, name: &str) -> (String, String) {
    let line = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|l| l.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {headers:?}"));
    let value = line[name.len() + 1..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (value, line)
}

/// The first `name="csrf" value="..."` of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a form token") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

/// Signs in with `key`; the session cookie's value and the page's form token.
async fn sign_in(app: &TestApp, key: &str, extra: &[(&str, &str)]) -> (String, String, String) {
    let c = client();
    let page = c.get(app.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (token, _) = set_cookie(page.headers(), "outdial_console_signin");
    let old = extra
        .iter()
        .find(|(k, _)| *k == "old-session")
        .map(|(_, v)| format!("; outdial_console={v}"))
        .unwrap_or_default();
    let mut req = c
        .post(app.url("/console/sign-in"))
        .header(COOKIE, format!("outdial_console_signin={token}{old}"))
        .form(&[("csrf", token.as_str()), ("api_key", key)]);
    for (k, v) in extra.iter().filter(|(k, _)| *k != "old-session") {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/conversations");
    let (session, line) = set_cookie(r.headers(), "outdial_console");
    let page = c
        .get(app.url("/console/conversations"))
        .header(COOKIE, format!("outdial_console={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (session, line, csrf_of(&page))
}

#[tokio::test]
async fn the_sign_in_page_is_labelled_and_under_the_policy() {
    let app = TestApp::spawn().await;
    let r = client().get(app.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-security-policy"],
        api::console::CONTENT_SECURITY_POLICY
    );
    assert!(!api::console::CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let (_, line) = set_cookie(r.headers(), "outdial_console_signin");
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Strict"),
        "{line}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<label for="api-key">API key</label>"#));
    assert!(html.contains(r#"<button type="submit">Sign in</button>"#));
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );
    let js = client()
        .get(app.url("/console/assets/htmx.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("htmx"));
}

#[tokio::test]
async fn a_key_becomes_a_session_cookie_that_sign_out_ends_on_the_server() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let (session, line, csrf) = sign_in(&app, &t.key, &[]).await;
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(line.contains(attribute), "{attribute} in {line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP: {line}");
    assert!(!line.contains(&t.key));
    let cookie = format!("outdial_console={session}");
    let c = client();

    // A form without the session's token, or sent cross-site, is refused and changes nothing.
    let forged = c
        .post(app.url("/console/sign-out"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let cross = c
        .post(app.url("/console/sign-out"))
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let still = c
        .get(app.url("/console/agents"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);

    let out = c
        .post(app.url("/console/sign-out"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (cleared, _) = set_cookie(out.headers(), "outdial_console");
    assert_eq!(cleared, "");
    // The old cookie, replayed, no longer works: to the sign-in page, or for a fragment htmx
    // polls, a 401 that tells htmx where to go.
    let page = c
        .get(app.url("/console/conversations"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/console");
    let fragment = c
        .get(app.url("/console/conversations/rows"))
        .header(COOKIE, &cookie)
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(fragment.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fragment.headers()["hx-redirect"], "/console");
}

#[tokio::test]
async fn sign_in_needs_its_own_token_and_a_good_key() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let c = client();
    // Another site's form (no token cookie, or not the same token) cannot sign a browser in.
    let no_cookie = c
        .post(app.url("/console/sign-in"))
        .form(&[("csrf", "abc"), ("api_key", t.key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(no_cookie.status(), StatusCode::FORBIDDEN);
    let mismatch = c
        .post(app.url("/console/sign-in"))
        .header(COOKIE, "outdial_console_signin=abd")
        .form(&[("csrf", "abc"), ("api_key", t.key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), StatusCode::FORBIDDEN);
    let wrong = c
        .post(app.url("/console/sign-in"))
        .header(COOKIE, "outdial_console_signin=abc")
        .form(&[("csrf", "abc"), ("api_key", &t.key.replace("od_", "od_x"))])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .all(|v| !v.to_str().unwrap().starts_with("outdial_console=")));
    let html = wrong.text().await.unwrap();
    assert!(html.contains(r#"<p class="error" id="api-key-error">invalid or missing api key</p>"#));
}

#[tokio::test]
async fn the_cookie_is_secure_behind_tls() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let (_, line, _) = sign_in(&app, &t.key, &[("x-forwarded-proto", "https")]).await;
    assert!(line.contains("; Secure"), "{line}");
}

#[tokio::test]
async fn a_revoked_key_ends_its_sessions() {
    use domain::store::Store;
    let app = TestApp::spawn_with(api::ApiConfig {
        key_cache_ttl: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await;
    let t = app.tenant("acme").await;
    let (session, _, _) = sign_in(&app, &t.key, &[]).await;
    let cookie = format!("outdial_console={session}");
    let get = || {
        client()
            .get(app.url("/console/batches"))
            .header(COOKIE, cookie.clone())
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    let key = app.store.list_api_keys(t.id).await.unwrap()[0].id;
    assert!(app
        .store
        .revoke_api_key(t.id, key, domain::Millis::now())
        .await
        .unwrap());
    assert_eq!(get().await.unwrap().status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn another_tenants_things_are_not_found() {
    let app = TestApp::spawn().await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    let agent = app.agent(&a, "+918035739222").await;
    let r = app
        .post(
            &a,
            "/v1/call",
            &crate::harness::call(agent, "+919876543210"),
        )
        .await;
    let location = r.headers()[LOCATION].to_str().unwrap().to_string();
    let id = location.rsplit('/').next().unwrap();
    let (session, _, _) = sign_in(&app, &b.key, &[]).await;
    let cookie = format!("outdial_console={session}");
    for (path, message) in [
        (
            format!("/console/conversations/{id}"),
            "conversation not found",
        ),
        (format!("/console/agents/{agent}"), "agent not found"),
    ] {
        let r = client()
            .get(app.url(&path))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.text().await.unwrap().contains(message), "{path}");
    }
    let list = client()
        .get(app.url("/console/conversations/rows"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("No conversations match.") && !list.contains(id));
    let (own, _, _) = sign_in(&app, &a.key, &[]).await;
    let mine = client()
        .get(app.url("/console/conversations/rows"))
        .header(COOKIE, format!("outdial_console={own}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(mine.contains(id), "the owner sees it");
}

#[tokio::test]
async fn signing_in_again_replaces_the_old_session() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let (first, _, _) = sign_in(&app, &t.key, &[]).await;
    let (second, _, _) = sign_in(&app, &t.key, &[("old-session", first.as_str())]).await;
    assert_ne!(first, second);
    let status = |session: String| {
        client()
            .get(app.url("/console/agents"))
            .header(COOKIE, format!("outdial_console={session}"))
            .send()
    };
    assert_eq!(status(first).await.unwrap().status(), StatusCode::SEE_OTHER);
    assert_eq!(status(second).await.unwrap().status(), 200);
}
