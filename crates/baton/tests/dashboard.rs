//! The dashboard in a real headless browser: Debian's chromium driven through chromedriver
//! (WebDriver, with the `fantoccini` client) against three `baton server` processes. The page
//! must show the holder and the waiters of a contended name among 10,000 other names held, and a
//! new leader once the group's leader process is killed, without a reload; it must fetch nothing
//! from anywhere but the node.
//!
//! Without chromium and chromedriver installed the test says so and skips, unless
//! `BATON_REQUIRE_BROWSER` is set (as in CI, which installs them), where it fails. With
//! `BATON_SCREENSHOT=path.png` it saves what the page showed under contention (that is how
//! docs/dashboard.png is made).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use fantoccini::Locator;
use futures::StreamExt;

mod common;

use common::{contend, free_ports, wait_for_line, Proc, BATON};

fn installed(tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BATON_REQUIRE_BROWSER").is_none(),
            "BATON_REQUIRE_BROWSER is set but {tool} is missing"
        );
        eprintln!("{tool} is not installed: skipping the dashboard's browser test (.ci/run installs it)");
    }
    found
}

/// Polls `check` (a script returning a value, or null while not there yet) until it returns
/// something other than null, for at most `limit`.
async fn wait_page(page: &fantoccini::Client, what: &str, script: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = page.execute(script, vec![]).await.unwrap();
        if !v.is_null() {
            return v;
        }
        if Instant::now() > deadline {
            let text = page.execute("return document.body.innerText", vec![]).await.unwrap();
            panic!("the page never showed {what}; it shows:\n{}", text.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// chromedriver on `driver_port` and a headless chromium page driven through it.
async fn browser(driver_port: u16) -> (Proc, fantoccini::Client) {
    let driver = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", driver_port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-proxy-server"],
        }
    }))
    .unwrap();
    let page = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .unwrap();
    (driver, page)
}

/// Runs `baton ARGS` to its end (at most 30 s): its exit code.
fn baton(args: &[&str]) -> i32 {
    let mut child = Command::new(BATON).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "baton {args:?} did not end within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With authentication on, the page asks for a user and password, then shows what that user
/// may read: the events of its names, not of others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_and_shows_what_its_user_may_read() {
    if !installed("chromium") || !installed("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (addr, http) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let mut dev = Proc(
        Command::new(BATON)
            .args(["dev", "--data", dir.path().join("data").to_str().unwrap(), "--client-addr", &addr])
            .args(["--http-addr", &http])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut dev.0, "serving clients");
    let eps = ["--endpoints", addr.as_str()];
    for setup in [
        &["user", "add", "root", "--new-password", "rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "viewer"],
        &["role", "grant", "viewer", "read", "demo/"],
        &["user", "add", "viewer", "--new-password", "viewerpw"],
        &["user", "grant-role", "viewer", "viewer"],
        &["auth", "enable"],
    ] {
        assert_eq!(baton(&[setup, &eps[..]].concat()), 0, "{setup:?}");
    }
    let root = ["--user", "root:rootpw"];
    for name in ["demo/x", "secret/y"] {
        assert_eq!(baton(&[&root[..], &["lock", name], &eps[..], &["--", "true"]].concat()), 0, "lock {name}");
    }
    let (_driver, page) = browser(ports[2]).await;
    page.goto(&format!("http://{http}/")).await.unwrap();
    wait_page(
        &page,
        "the sign-in form",
        "return document.querySelector('#login').hidden ? null : true",
        Duration::from_secs(20),
    )
    .await;
    page.find(Locator::Css("#login-user")).await.unwrap().send_keys("viewer").await.unwrap();
    page.find(Locator::Css("#login-password")).await.unwrap().send_keys("wrong").await.unwrap();
    page.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
    wait_page(
        &page,
        "the refusal of a wrong password",
        "const t = document.querySelector('#login-error').textContent; return t.includes('authentication failed') ? t : null",
        Duration::from_secs(20),
    )
    .await;
    page.find(Locator::Css("#login-password")).await.unwrap().clear().await.unwrap();
    page.find(Locator::Css("#login-password")).await.unwrap().send_keys("viewerpw").await.unwrap();
    page.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
    wait_page(
        &page,
        "demo/x's events, signed in",
        "const t = document.querySelector('#events').textContent; \
         return document.querySelector('#login').hidden && t.includes('demo/x granted') ? t : null",
        Duration::from_secs(20),
    )
    .await;
    let shown = page.execute("return document.body.innerText", vec![]).await.unwrap();
    assert!(!shown.as_str().unwrap().contains("secret/y"), "the page shows a name the user may not read: {shown}");
    // The token lives in an HttpOnly cookie: page scripts cannot read it.
    let cookies = page.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies.as_str(), Some(""), "{cookies}");
    page.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_contention_and_a_leader_change() {
    if !installed("chromium") || !installed("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(10);
    let peers: String = (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 + i])).collect::<Vec<_>>().join(",");
    let mut servers: Vec<Option<Proc>> = Vec::new();
    for i in 0..3 {
        let mut child = Command::new(BATON)
            .args([
                "server",
                "--id",
                &(i + 1).to_string(),
                "--data",
                dir.path().join(format!("n{i}")).to_str().unwrap(),
            ])
            .args(["--client-addr", &format!("127.0.0.1:{}", ports[i])])
            .args(["--peer-addr", &format!("127.0.0.1:{}", ports[3 + i])])
            .args(["--peers", &peers, "--groups", "1"])
            .args(["--http-addr", &format!("127.0.0.1:{}", ports[6 + i])])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_line(&mut child, "serving clients");
        servers.push(Some(Proc(child)));
    }
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
    let client = Client::connect_with(endpoints.clone(), ClientOptions::default()).await.unwrap();

    // Contention: one holder, two waiters queued behind it (waited for, not slept for).
    let name = "orders/checkout";
    let contention = contend(&client, name, 2).await;
    let (sessions, held) = (&contention.sessions, &contention.held);
    // 10,000 more names held: the page must stay as it is (it shows the hottest names only).
    let bulk = client.session(Duration::from_secs(30)).await.unwrap();
    let held_many: Vec<_> = futures::stream::iter(0..10_000)
        .map(|i| {
            let bulk = bulk.clone();
            async move { bulk.lock(&format!("bulk/{i}"), None).await.unwrap().unwrap() }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    assert_eq!(held_many.len(), 10_000);
    let group = client.history(name, 1).await.unwrap().group;
    let status = client.status().await.unwrap();
    let leader = status.groups.iter().find(|g| g.id == group).map(|g| g.leader).unwrap();
    assert!(leader > 0, "group {group} has a leader");
    // The page is served by a node that will survive the leader's death.
    let watcher = (1..=3u64).find(|id| *id != leader).unwrap();
    let page_url = format!("http://127.0.0.1:{}/", ports[6 + watcher as usize - 1]);

    let (_driver, page) = browser(ports[9]).await;
    page.goto(&page_url).await.unwrap();

    // The hot table names the holder (session and token) and the two waiters.
    let row = format!(r#"document.querySelector('#hot tr[data-name="{name}"]')"#);
    let shown = wait_page(
        &page,
        "the contended name with its holder and two waiters",
        &format!(
            "const r = {row}; if (!r) return null; \
             const holders = r.querySelector('.holders').textContent, waiting = r.querySelector('.waiting').textContent; \
             return holders.includes('s{}/t{}') && waiting === '2' ? [holders, waiting] : null;",
            sessions[0].id(),
            held.token()
        ),
        Duration::from_secs(30),
    )
    .await;
    eprintln!("the page shows {name}: {shown}");
    // ... and every name held, in the groups table.
    wait_page(
        &page,
        "the 10,001 names held",
        "const n = [...document.querySelectorAll('#groups tbody tr')].map(r => +r.children[6].textContent).reduce((a, b) => a + b, 0); \
         return n >= 10001 ? n : null;",
        Duration::from_secs(30),
    )
    .await;
    // How long one refresh of the page's data takes with them held (measured, not asserted).
    let took = page
        .execute_async(
            "const done = arguments[arguments.length - 1]; const t = performance.now(); \
             Promise.all([fetch('/api/overview').then(r => r.json()), fetch('/api/hot?limit=20').then(r => r.json())]) \
               .then(() => done(performance.now() - t));",
            vec![],
        )
        .await
        .unwrap();
    eprintln!("one refresh of the dashboard's data with 10,001 names held: {took} ms");
    // A caller that gives up after 300 ms: the live stream shows it queue and give up (SSE, no
    // reload).
    let impatient = client.session(Duration::from_secs(10)).await.unwrap();
    assert!(impatient.lock(name, Some(Duration::from_millis(300))).await.unwrap().is_none());
    wait_page(
        &page,
        "the impatient caller in the live stream",
        &format!(
            "const lines = [...document.querySelectorAll('#events li')].map(li => li.textContent); \
             return lines.some(l => l.includes('{name} queued s{0}')) && lines.some(l => l.includes('{name} gave up s{0} (timed_out)')) ? true : null",
            impatient.id()
        ),
        Duration::from_secs(10),
    )
    .await;
    // Clicking the name shows its history.
    page.find(Locator::Css(&format!(r#"#hot tr[data-name="{name}"]"#))).await.unwrap().click().await.unwrap();
    wait_page(
        &page,
        "the name's history",
        &format!(
            "return document.querySelector('#history').textContent.includes('{name} granted s{} t{}') ? true : null",
            sessions[0].id(),
            held.token()
        ),
        Duration::from_secs(10),
    )
    .await;
    if let Some(path) = std::env::var_os("BATON_SCREENSHOT") {
        std::fs::write(&path, page.screenshot().await.unwrap()).unwrap();
    }
    // Nothing was fetched from anywhere but the node itself.
    let origins = page
        .execute("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)", vec![])
        .await
        .unwrap();
    let own = page_url.trim_end_matches('/');
    assert!(origins.as_array().unwrap().iter().all(|o| o.as_str() == Some(own)), "fetched elsewhere: {origins}");

    // Kill the group's leader: the page (on another node) shows a new leader without a reload.
    let before = page.execute("return window.performance.timeOrigin", vec![]).await.unwrap();
    servers[leader as usize - 1] = None;
    let new_leader = wait_page(
        &page,
        &format!("a leader other than node {leader} for group {group}"),
        &format!(
            "const c = document.querySelector('#groups tr[data-group=\"{group}\"] td[data-leader]'); \
             if (!c) return null; const l = c.dataset.leader; return l !== '' && l !== '{leader}' ? l : null;"
        ),
        Duration::from_secs(30),
    )
    .await;
    eprintln!("the page shows node {new_leader} leading group {group} after node {leader} died");
    assert_eq!(page.execute("return window.performance.timeOrigin", vec![]).await.unwrap(), before, "no reload");
    page.close().await.unwrap();
}
