//! The device authorization grant (RFC 8628) through real HTTP: the device's
//! requests, the verification page walked by a cookie-keeping browser, and
//! the polling answers of section 3.5, with the RFC's edge cases: polling too
//! fast, expired codes, denied and replayed codes, user codes typed any way,
//! used once, guessed (limited like passwords, also 100 at once), approvals
//! racing each other and polls racing the approval.

mod common;
mod device_helpers;
mod jose_helpers;
mod oauth_helpers;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::*;
use device_helpers::*;
use oauth_helpers::*;

/// The standard config, `tv` (public; device_code, refresh_token; read write)
/// and `tv2` (public; device_code), with these [oauth] device settings.
async fn gateway(oauth_extra: &str) -> (Gateway, Upstream) {
    let up = spawn_upstream().await;
    let text = config_text(up.addr).replacen("[oauth]\n", &format!("[oauth]\n{oauth_extra}\n"), 1)
        + r#"
[[clients]]
id = "tv"
grants = ["device_code", "refresh_token"]
scopes = ["read", "write"]

[[clients]]
id = "tv2"
grants = ["device_code"]
scopes = ["read"]
"#;
    (spawn_gateway_with(&text).await, up)
}

/// Polls never meet the interval here: a second poll is always too fast.
const LONG_INTERVAL: &str = "device_poll_interval = \"60s\"";

fn code_of(j: &Value) -> (&str, &str) {
    (str_of(j, "device_code"), str_of(j, "user_code"))
}

#[tokio::test]
async fn the_whole_flow_from_code_to_api_call() {
    let (gw, _up) = gateway("").await;
    let r = authorize(&gw, "tv", "read").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    let (device_code, user_code) = code_of(&j);
    assert_eq!(device_code.len(), 43, "256 random bits");
    assert_eq!(user_code.len(), 9);
    assert!(
        user_code.chars().enumerate().all(|(i, c)| if i == 4 {
            c == '-'
        } else {
            "BCDFGHJKLMNPQRSTVWXZ".contains(c)
        }),
        "{user_code}"
    );
    assert_eq!(j["verification_uri"], format!("{ISSUER}/auth/device"));
    assert_eq!(
        j["verification_uri_complete"],
        format!("{ISSUER}/auth/device?user_code={user_code}")
    );
    assert_eq!(j["expires_in"], 600);
    assert_eq!(j["interval"], 5);

    // Pending until approved.
    assert_oauth_error(
        &poll(&gw, "tv", device_code).await,
        400,
        "authorization_pending",
    );
    // The link fills the code in; the user still confirms it.
    let mut b = DeviceBrowser::new();
    let page = b
        .get(&gw.url(&format!("/auth/device?user_code={user_code}")))
        .await;
    assert_eq!(page.status, 200);
    assert_page_headers(&page);
    assert!(
        page.text().contains(&format!("value=\"{user_code}\"")),
        "{}",
        page.text()
    );
    assert!(!page.text().contains("<script"), "no JavaScript");
    let login = b
        .submit(&gw, &page, &[("action", "code"), ("user_code", user_code)])
        .await;
    assert!(
        login.text().contains("tv"),
        "the client is named: {}",
        login.text()
    );
    let consent = b
        .submit(
            &gw,
            &login,
            &[
                ("action", "login"),
                ("username", "alice"),
                ("password", ALICE_PW),
            ],
        )
        .await;
    assert_page_headers(&consent);
    let html = consent.text();
    assert!(html.contains(user_code), "the code is shown again: {html}");
    assert!(
        html.contains("<li>read</li>") && !html.contains("<li>write</li>"),
        "{html}"
    );
    let done = b.decide(&gw, &consent, "approve").await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(
        !b.cookies.contains_key("whosthat_device_txn"),
        "the page's cookie is cleared"
    );

    // The poll after the interval gets the tokens.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let tokens = assert_tokens(&poll(&gw, "tv", device_code).await);
    assert_eq!(str_of(&tokens, "scope"), "read");
    let at = str_of(&tokens, "access_token");
    let seen = get_with_token(&gw.url("/api/x"), at).await.seen();
    assert_eq!(seen.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-client").as_deref(), Some("tv"));
    let rt = str_of(&tokens, "refresh_token");
    let r = token(
        &gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", "tv"),
        ],
        &[],
    )
    .await;
    let refreshed = assert_tokens(&r);

    // The device code is used up: presented again (after the interval) it is
    // a replay, and what it yielded is revoked.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    assert_oauth_error(&poll(&gw, "tv", device_code).await, 400, "invalid_grant");
    let at2 = str_of(&refreshed, "access_token");
    assert_eq!(get_with_token(&gw.url("/api/x"), at2).await.status, 401);
}

#[tokio::test]
async fn polling_too_fast_is_slow_down_and_counted() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let j = started(&gw, "tv", "").await;
    assert_eq!(j["interval"], 60);
    let (device_code, user_code) = code_of(&j);
    assert_oauth_error(
        &poll(&gw, "tv", device_code).await,
        400,
        "authorization_pending",
    );
    for _ in 0..3 {
        assert_oauth_error(&poll(&gw, "tv", device_code).await, 400, "slow_down");
    }
    // Approved meanwhile: a poll that comes too fast still waits its turn.
    approve(&gw, user_code, "alice", ALICE_PW).await;
    assert_oauth_error(&poll(&gw, "tv", device_code).await, 400, "slow_down");
}

#[tokio::test]
async fn a_poll_that_waits_the_interval_is_not_too_fast() {
    let (gw, _up) = gateway("device_poll_interval = \"1s\"").await;
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    for _ in 0..2 {
        assert_oauth_error(
            &poll(&gw, "tv", device_code).await,
            400,
            "authorization_pending",
        );
        tokio::time::sleep(Duration::from_millis(1_300)).await;
    }
    approve(&gw, user_code, "alice", ALICE_PW).await;
    assert_tokens(&poll(&gw, "tv", device_code).await);
}

#[tokio::test]
async fn a_denied_request_is_access_denied() {
    let (gw, _up) = gateway("device_poll_interval = \"1s\"").await;
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    let mut b = DeviceBrowser::new();
    let consent = b.reach_consent(&gw, user_code, "alice", ALICE_PW).await;
    let done = b.decide(&gw, &consent, "deny").await;
    assert_eq!(done.status, 200);
    assert!(done.text().contains("was not allowed"), "{}", done.text());
    for _ in 0..2 {
        assert_oauth_error(&poll(&gw, "tv", device_code).await, 400, "access_denied");
        tokio::time::sleep(Duration::from_millis(1_300)).await;
    }
}

#[tokio::test]
async fn an_expired_code_is_expired_token_and_no_longer_accepted_on_the_page() {
    let (gw, _up) = gateway("device_code_ttl = \"1s\"").await;
    let j = started(&gw, "tv", "read").await;
    assert_eq!(j["expires_in"], 1);
    let (device_code, user_code) = code_of(&j);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_oauth_error(&poll(&gw, "tv", device_code).await, 400, "expired_token");
    let mut b = DeviceBrowser::new();
    let page = b.enter_code(&gw, user_code).await;
    assert!(page.text().contains("not valid"), "{}", page.text());
}

#[tokio::test]
async fn user_codes_are_case_insensitive_and_single_use() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    // Lower case, without the dash, with spaces.
    let typed = format!(" {} ", user_code.replace('-', "").to_lowercase());
    let mut b = DeviceBrowser::new();
    let login = b.enter_code(&gw, &typed).await;
    assert!(login.text().contains("Sign in"), "{}", login.text());
    // Two browsers reach the consent for one code; one approval counts.
    let mut first = DeviceBrowser::new();
    let mut second = DeviceBrowser::new();
    let c1 = first.reach_consent(&gw, user_code, "alice", ALICE_PW).await;
    let c2 = second.reach_consent(&gw, user_code, "bob", BOB_PW).await;
    assert_eq!(first.decide(&gw, &c1, "approve").await.status, 200);
    let late = second.decide(&gw, &c2, "approve").await;
    assert_eq!(late.status, 400, "{}", late.text());
    assert!(late.text().contains("already used"), "{}", late.text());
    // Used: not accepted again.
    let again = DeviceBrowser::new().enter_code(&gw, user_code).await;
    assert!(again.text().contains("not valid"), "{}", again.text());
    // The tokens are alice's.
    let tokens = assert_tokens(&poll(&gw, "tv", device_code).await);
    let at = str_of(&tokens, "access_token");
    let who = get_with_token(&gw.url("/auth/userinfo"), at).await.json();
    assert_eq!(who["user"], "alice");
}

#[tokio::test]
async fn approvals_racing_each_other_have_one_winner() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let gw = Arc::new(gw);
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    let mut ready = Vec::new();
    for _ in 0..10 {
        let mut b = DeviceBrowser::new();
        let consent = b.reach_consent(&gw, user_code, "alice", ALICE_PW).await;
        ready.push((b, consent));
    }
    let mut tasks = Vec::new();
    for (mut b, consent) in ready {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            b.decide(&gw, &consent, "approve").await.status.as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 400).count(),
        9,
        "{statuses:?}"
    );
    assert_tokens(&poll(&gw, "tv", device_code).await);
}

/// `n` polls of `device_code` at once; their answers (200 or the error code).
async fn polls_at_once(gw: &Arc<Gateway>, device_code: &str, n: usize) -> Vec<(u16, Value)> {
    let device_code = Arc::new(device_code.to_string());
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (gw, device_code) = (gw.clone(), device_code.clone());
        tasks.push(tokio::spawn(async move {
            let r = poll(&gw, "tv", &device_code).await;
            (r.status.as_u16(), r.json())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn polls_racing_each_other_get_the_tokens_once_and_revoke_nothing() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let gw = Arc::new(gw);
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    approve(&gw, user_code, "alice", ALICE_PW).await;
    let answers = polls_at_once(&gw, device_code, 100).await;
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, j)| j)
        .collect();
    assert_eq!(winners.len(), 1, "one poll gets the tokens");
    for (status, body) in &answers {
        if *status != 200 {
            assert_eq!(
                (*status, body["error"].as_str()),
                (400, Some("slow_down")),
                "{body}"
            );
        }
    }
    // The racing polls were too fast, not replays: the tokens stay good.
    let at = str_of(winners[0], "access_token");
    assert_eq!(get_with_token(&gw.url("/api/x"), at).await.status, 200);
}

#[tokio::test]
async fn polls_racing_the_approval_count_one_poll_as_on_time() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let gw = Arc::new(gw);
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    let racing = {
        let (gw, device_code) = (gw.clone(), device_code.to_string());
        tokio::spawn(async move { polls_at_once(&gw, &device_code, 100).await })
    };
    approve(&gw, user_code, "alice", ALICE_PW).await;
    let answers = racing.await.unwrap();
    // Exactly one of them was not too fast: it found the request pending or
    // approved (then with the tokens); every other one is slow_down.
    let on_time: Vec<_> = answers
        .iter()
        .filter(|(_, j)| j["error"] != "slow_down")
        .collect();
    assert_eq!(on_time.len(), 1, "{on_time:?}");
    let (status, body) = on_time[0];
    assert!(
        *status == 200 || body["error"] == "authorization_pending",
        "{status} {body}"
    );
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 400));
}

#[tokio::test]
async fn guessing_user_codes_is_limited_like_passwords() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let gw = Arc::new(gw);
    let j = started(&gw, "tv", "read").await;
    let (_, right) = code_of(&j);
    let right = right.to_string();
    // 100 wrong guesses at once from one address.
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = DeviceBrowser::from(Ipv4Addr::new(127, 0, 0, 9));
            // Valid-looking codes that were never issued (a clash with the
            // one live code is a chance of 1 in 2^34).
            let letters = b"BCDFGHJKLMNPQRSTVWXZ";
            let guess: String = (0..8)
                .map(|k| letters[((i as usize) * 7 + k * 3) % 20] as char)
                .collect();
            b.enter_code(&gw, &guess).await.text()
        }));
    }
    let (mut checked, mut limited) = (0u32, 0u32);
    for t in tasks {
        let page = t.await.unwrap();
        if page.contains("Too many wrong codes") {
            limited += 1;
        } else {
            assert!(page.contains("not valid"), "{page}");
            checked += 1;
        }
    }
    assert!(
        checked <= 10,
        "at most the address's burst is checked: {checked}"
    );
    assert_eq!(checked + limited, 100);
    // Wrong guesses one after another until the address's budget is spent
    // (those refused at once by the in-flight cap above were not counted).
    let mut spent = false;
    for i in 0..=10 {
        let guess = [
            "BBBBBBBB", "CCCCCCCC", "DDDDDDDD", "FFFFFFFF", "GGGGGGGG", "HHHHHHHH",
        ][i % 6];
        let page = DeviceBrowser::from(Ipv4Addr::new(127, 0, 0, 9))
            .enter_code(&gw, guess)
            .await;
        if page.text().contains("Too many wrong codes") {
            spent = true;
            break;
        }
        checked += 1;
    }
    assert!(spent, "the budget ran out");
    assert!(
        checked <= 10,
        "at most the address's burst was checked: {checked}"
    );
    // The right code from that address is refused now too; from another it works.
    let page = DeviceBrowser::from(Ipv4Addr::new(127, 0, 0, 9))
        .enter_code(&gw, &right)
        .await;
    assert!(
        page.text().contains("Too many wrong codes"),
        "{}",
        page.text()
    );
    let page = DeviceBrowser::from(Ipv4Addr::new(127, 0, 0, 10))
        .enter_code(&gw, &right)
        .await;
    assert!(page.text().contains("Sign in"), "{}", page.text());
}

#[tokio::test]
async fn the_page_refuses_forged_and_out_of_step_forms() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let j = started(&gw, "tv", "read").await;
    let (_, user_code) = code_of(&j);
    // No page cookie: back to a fresh page, nothing done.
    let mut stranger = DeviceBrowser::new();
    let r = stranger
        .post(
            &gw,
            &[("csrf", "x"), ("action", "code"), ("user_code", user_code)],
        )
        .await;
    assert_eq!(r.status, 303);
    // A wrong CSRF token.
    let mut b = DeviceBrowser::new();
    let page = b.page(&gw).await;
    assert_page_headers(&page);
    let r = b
        .post(
            &gw,
            &[
                ("csrf", "wrong"),
                ("action", "code"),
                ("user_code", user_code),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Approving before signing in.
    let csrf = csrf_of(&page);
    let r = b.post(&gw, &[("csrf", &csrf), ("action", "approve")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // A malformed code is not counted and says what is expected.
    let page = b
        .submit(&gw, &page, &[("action", "code"), ("user_code", "<b>x</b>")])
        .await;
    assert!(page.text().contains("8-letter code"), "{}", page.text());
    assert!(!page.text().contains("<b>x</b>"));
    // The link's code is only filled in when well formed (and escaped anyway).
    let r = b
        .get(&gw.url("/auth/device?user_code=%22%3E%3Cscript%3E"))
        .await;
    assert!(!r.text().contains("<script>"), "{}", r.text());
    // A user who may not grant the scope asked for cannot approve.
    let j = started(&gw, "tv", "write").await;
    let mut b = DeviceBrowser::new();
    let login = b.enter_code(&gw, str_of(&j, "user_code")).await;
    let again = b
        .submit(
            &gw,
            &login,
            &[
                ("action", "login"),
                ("username", "bob"),
                ("password", BOB_PW),
            ],
        )
        .await;
    assert!(again.text().contains("may not grant"), "{}", again.text());
    assert!(again.text().contains("Sign in"));
}

#[tokio::test]
async fn device_authorization_request_errors() {
    let (gw, _up) = gateway("").await;
    // cli may not use the grant; a scope beyond the client's; an unknown client.
    assert_oauth_error(
        &authorize(&gw, "cli", "read").await,
        400,
        "unauthorized_client",
    );
    assert_oauth_error(&authorize(&gw, "tv", "admin").await, 400, "invalid_scope");
    assert_oauth_error(
        &authorize(&gw, "nobody", "read").await,
        401,
        "invalid_client",
    );
    let r = get(&gw.url(DEVICE_AUTHORIZATION), &[]).await;
    assert_eq!(r.status, 405);
    // The token endpoint knows the grant only by its URN.
    let j = started(&gw, "tv", "read").await;
    let r = token(
        &gw,
        &[
            ("grant_type", "device_code"),
            ("device_code", str_of(&j, "device_code")),
            ("client_id", "tv"),
        ],
        &[],
    )
    .await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
    let r = token(&gw, &[("grant_type", GRANT), ("client_id", "tv")], &[]).await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert_oauth_error(&poll(&gw, "tv", "not-a-code").await, 400, "invalid_grant");
    // A client that may not use the grant cannot poll either.
    let r = poll(&gw, "cli", str_of(&j, "device_code")).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
}

#[tokio::test]
async fn another_clients_device_code_is_refused_and_left_alone() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    approve(&gw, user_code, "alice", ALICE_PW).await;
    assert_oauth_error(&poll(&gw, "tv2", device_code).await, 400, "invalid_grant");
    assert_tokens(&poll(&gw, "tv", device_code).await);
}

#[tokio::test]
async fn a_device_with_a_dpop_key_gets_bound_tokens() {
    let (gw, _up) = gateway(LONG_INTERVAL).await;
    let j = started(&gw, "tv", "read").await;
    let (device_code, user_code) = code_of(&j);
    approve(&gw, user_code, "alice", ALICE_PW).await;
    let key = jose_helpers::Key::es256();
    let proof = key.proof("POST", &gw.url("/auth/access_token"), None);
    let r = token(
        &gw,
        &[
            ("grant_type", GRANT),
            ("device_code", device_code),
            ("client_id", "tv"),
        ],
        &[("dpop", &proof)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "DPoP");
}
