//! The status page in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! with the W3C protocol's few JSON calls made directly. The page must load with no console
//! error, show a delivery made a moment earlier, and show a new one without a reload; its
//! screenshot is written to target/artifacts/status-page.png.

use crate::common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "{path}: {v}");
        v["value"].clone()
    }
}

fn chromium() -> Option<(&'static str, &'static str)> {
    let (b, d) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
    (std::path::Path::new(b).exists() && std::path::Path::new(d).exists()).then_some((b, d))
}

async fn start_driver(driver: &str) -> Driver {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    let until = Instant::now() + Duration::from_secs(20);
    while d
        .http
        .get(format!("{}/status", d.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_deliveries_live_in_chromium() {
    let Some((browser, driver)) = chromium() else {
        eprintln!(
            "note: chromium or chromedriver is absent; the status page's browser test is skipped"
        );
        return;
    };
    let s = Setup::new()
        .section("[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nmax_connections_per_ip = 0");
    let gh = format!(
        "name = \"web\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("web", "page-secret").display()
    );
    let profile = s.path("chromium-profile");
    let g = s.receiver(&gh).start();
    let path = hook("page-secret", "web", "flux-system");
    let earlier = uid();
    let body = fresh_push();
    let (st, _) = g
        .post(&path, &refs(&signed("page-secret", &body, &earlier)), body)
        .await;
    assert_eq!(st, 200);

    let d = start_driver(driver).await;
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1200,800",
                     format!("--user-data-dir={}", profile.display())]
        },
        "goog:loggingPrefs": {"browser": "ALL"}
    }}});
    let session = d.call(reqwest::Method::POST, "/session", Some(caps)).await;
    let sid = session["sessionId"].as_str().unwrap().to_string();
    let at = |p: &str| format!("/session/{sid}{p}");
    let page = format!("http://127.0.0.1:{}/", g.admin);
    d.call(
        reqwest::Method::POST,
        &at("/url"),
        Some(json!({"url": page})),
    )
    .await;
    let script = |js: &str| json!({"script": js, "args": []});
    let table = "return document.querySelector('#deliveries tbody').textContent";
    let text = d
        .call(
            reqwest::Method::POST,
            &at("/execute/sync"),
            Some(script(table)),
        )
        .await;
    assert!(text.as_str().unwrap().contains(&earlier), "{text}");

    // Wait for the stream to be open, then deliver again: the row appears without a reload.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let live = d
            .call(
                reqwest::Method::POST,
                &at("/execute/sync"),
                Some(script("return document.getElementById('live').textContent")),
            )
            .await;
        if live == "live" {
            break;
        }
        assert!(Instant::now() < until, "the stream did not open: {live}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marker = d
        .call(
            reqwest::Method::POST,
            &at("/execute/sync"),
            Some(script("window.fluxgateMarker = 1; return 1")),
        )
        .await;
    assert_eq!(marker, 1);
    let newer = uid();
    let body = fresh_push();
    let (st, _) = g
        .post(&path, &refs(&signed("page-secret", &body, &newer)), body)
        .await;
    assert_eq!(st, 200);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = d
            .call(
                reqwest::Method::POST,
                &at("/execute/sync"),
                Some(script(table)),
            )
            .await;
        if text.as_str().unwrap().contains(&newer) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new delivery did not appear: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let same_page = d
        .call(
            reqwest::Method::POST,
            &at("/execute/sync"),
            Some(script("return window.fluxgateMarker === 1")),
        )
        .await;
    assert_eq!(same_page, true, "the page was reloaded");

    // No console error (a CSP violation would be one).
    let log = d
        .http
        .post(format!("{}{}", d.base, at("/se/log")))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let entries = log["value"].as_array().cloned().unwrap_or_default();
    assert!(log["value"]["error"].is_null(), "{log}");
    let errors: Vec<_> = entries.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    let png = d.call(reqwest::Method::GET, &at("/screenshot"), None).await;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("status-page.png"), bytes).unwrap();
    let _ = d.http.delete(format!("{}{}", d.base, at(""))).send().await;
}

/// The page elides a hook path exactly as `fluxgate check` does (one function,
/// `hook_path::elide`), never showing the full path.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_elides_paths_as_check_does() {
    let s = Setup::new();
    let gh = format!(
        "name = \"web\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("web", "elide-secret").display()
    );
    let g = s.receiver(&gh).start();
    let path = hook("elide-secret", "web", "flux-system");
    let page = reqwest::get(format!("http://127.0.0.1:{}/", g.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let short = fluxgate::hook_path::elide(&path);
    assert!(short.len() < path.len(), "{short}");
    assert!(page.contains(&short), "{page}");
    assert!(!page.contains(&path), "the full path is on the page");
}

/// With `admin.token_file`, a browser signs in once with `/?token=`: a cookie holding the
/// token's SHA-256 (HttpOnly, SameSite=Strict), a redirect that takes the token out of the
/// address bar; the page and its stream then work in Chromium, and the token is nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_signs_in_once_with_the_admin_token() {
    let s = Setup::new();
    let token = "page-admin-token-1";
    let file = s.secret("admin", token);
    let profile = s.path("chromium-profile-token");
    let gh = format!(
        "name = \"web\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("web", "token-page-secret").display()
    );
    let g = s
        .section(&format!("[admin]\ntoken_file = \"{}\"", file.display()))
        .receiver(&gh)
        .start();
    let base = format!("http://127.0.0.1:{}", g.admin);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |p: &str| http.get(format!("{base}{p}")).send();
    assert_eq!(get("/").await.unwrap().status(), 401);
    assert_eq!(get("/?token=wrong").await.unwrap().status(), 401);
    let r = get(&format!("/?token={token}")).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(token), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    for p in ["/", "/deliveries"] {
        let r = http
            .get(format!("{base}{p}"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert!(!r.text().await.unwrap().contains(token));
    }
    let r = http
        .get(format!("{base}/"))
        .header("cookie", "fluxgate_admin=00")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let Some((browser, driver)) = chromium() else {
        eprintln!("note: chromium or chromedriver is absent; the browser part is skipped");
        return;
    };
    let d = start_driver(driver).await;
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run",
                     format!("--user-data-dir={}", profile.display())]
        }
    }}});
    let session = d.call(reqwest::Method::POST, "/session", Some(caps)).await;
    let sid = session["sessionId"].as_str().unwrap().to_string();
    let at = |p: &str| format!("/session/{sid}{p}");
    d.call(
        reqwest::Method::POST,
        &at("/url"),
        Some(json!({"url": format!("{base}/?token={token}")})),
    )
    .await;
    let script = |js: &str| json!({"script": js, "args": []});
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = d
            .call(
                reqwest::Method::POST,
                &at("/execute/sync"),
                Some(script(
                    "const l = document.getElementById('live'); return [location.href, l ? l.textContent : '', document.documentElement.outerHTML]",
                )),
            )
            .await;
        let href = v[0].as_str().unwrap_or_default();
        assert!(!v[2].as_str().unwrap_or_default().contains(token));
        if v[1] == "live" {
            assert_eq!(href, format!("{base}/"), "the token stayed in the address");
            break;
        }
        assert!(
            Instant::now() < until,
            "the signed-in page did not go live: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = d.http.delete(format!("{}{}", d.base, at(""))).send().await;
    assert!(!g.logs().contains(token), "the token is in the log");
}
