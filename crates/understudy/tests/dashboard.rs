//! The dashboard driven in a real headless Chromium (through chromedriver) through document 000's
//! whole story: add a server → add hot failover with two standbys → start refused while the server
//! runs → stop the server → start failover → see it active → kill -9 the active's agent → the
//! failure event appears in the page with its timeline → switch over → stop failover (the active's
//! service still runs) → delete failover. With `UNDERSTUDY_SCREENSHOTS=DIR` it saves a screenshot of
//! each step there (docs/dashboard/ holds the committed ones). A second test: a machine dies with a
//! plain server on it, and the operator stops the server and forgets the host from the page, both
//! forced on their word.

mod common;
mod plane_common;
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, check_overlaps, free_addr, wait_until, Proc, Watcher, BIN};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

fn get(addr: &str, path: &str) -> Value {
    match common::http("GET", addr, path, Duration::from_secs(2)) {
        Ok((200, b)) => serde_json::from_str(&b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn shot_dir() -> Option<PathBuf> {
    std::env::var_os("UNDERSTUDY_SCREENSHOTS").map(PathBuf::from)
}

async fn shot(c: &Client, dir: &Option<PathBuf>, name: &str) {
    if let Some(d) = dir {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(d).expect("screenshot dir");
        std::fs::write(d.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Wait until the page shows an element matching `css` (the page updates itself: no reloads).
async fn wait_css(c: &Client, css: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if c.find(Locator::Css(css)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// `act` on the element matching `css`. The page re-renders itself on every live update, so an
/// element found a moment ago may have been replaced: find it again and retry, for up to 5 s.
async fn on_element<T>(
    c: &Client,
    css: &str,
    act: impl AsyncFn(Element) -> Result<T, CmdError>,
) -> Result<T, CmdError> {
    let t0 = Instant::now();
    loop {
        let r = match c.find(Locator::Css(css)).await {
            Ok(e) => act(e).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() > Duration::from_secs(5) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Click the element matching `css` ([`on_element`]).
async fn click(c: &Client, css: &str) {
    if let Err(e) = on_element(c, css, async |e| e.click().await).await {
        panic!("click {css}: {e}");
    }
}

/// Click a button that asks for confirmation, and confirm. A click that found the button moved
/// by a live update (WebDriver aims at where it was) is made again, as a user would.
async fn click_confirm(c: &Client, css: &str) {
    let t0 = Instant::now();
    loop {
        click(c, css).await;
        let clicked = Instant::now();
        loop {
            match c.accept_alert().await {
                Ok(()) => return,
                Err(e) if t0.elapsed() > Duration::from_secs(5) => {
                    panic!("no confirmation dialog after clicking {css}: {e}")
                }
                Err(_) if clicked.elapsed() > Duration::from_secs(1) => {
                    eprintln!("no dialog yet after clicking {css}: clicking again");
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Attribute `name` of the element matching `css` ([`on_element`]).
async fn attr(c: &Client, css: &str, name: &str) -> Result<Option<String>, String> {
    on_element(c, css, async |e| e.attr(name).await)
        .await
        .map_err(|e| e.to_string())
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.ok();
    e.send_keys(value).await.expect("type");
}

/// The processes (other than this one) whose command line contains `needle`.
fn pids_naming(needle: &str) -> impl Iterator<Item = u32> + '_ {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(move |&pid| {
            pid != me && {
                let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&c).contains(needle)
            }
        })
}

fn agent_pid(data: &Path, node: &str) -> Option<u32> {
    pids_naming(&format!("{}/nodes/{node}.toml", data.display())).find(|&pid| alive(pid))
}

/// On drop, SIGKILLs every process whose command line names `0` (the test's directory): the
/// agents the control plane started and the services they run outlive `serve` by design, and a
/// failed run left them running.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in pids_naming(&self.0.display().to_string()) {
            common::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// chromium and chromedriver, or None with `test` reported skipped.
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (which("chromium"), which("chromedriver")) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            skip::skip(
                test,
                "chromium and chromedriver are not installed (Debian: chromium chromium-driver)",
            );
            None
        }
    }
}

/// Runs `f` in a headless Chromium driven through a chromedriver started here, in its own
/// process group so that the browsers it starts die with it.
fn in_browser(
    (chromium, driver): (PathBuf, PathBuf),
    f: impl AsyncFnOnce(&Client) -> Result<(), String>,
) -> Result<(), String> {
    let dport = free_addr()
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    let _driver = Proc::spawn(
        Command::new(driver)
            .arg(format!("--port={dport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("chromedriver");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut caps = serde_json::Map::new();
        // Leave confirm() dialogs open for the test to accept, as a person would.
        caps.insert("unhandledPromptBehavior".into(), json!("ignore"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,860"]
            }),
        );
        let mut c = None;
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{dport}"))
                .await
            {
                Ok(cl) => {
                    c = Some(cl);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let c = c.expect("chromedriver did not accept a session");
        let result = f(&c).await;
        let _ = c.close().await;
        result
    })
}

#[test]
fn the_dashboard_story_in_a_real_browser() {
    let Some(tools) = browser_tools("the_dashboard_story_in_a_real_browser") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let _leftovers = KillLeftovers(dir.path().to_path_buf());
    let plane = plane_common::Plane::start(&data, &free_addr());
    let addr = plane.addr.clone();
    let shots = shot_dir();
    in_browser(tools, async |c| story(c, &addr, &data, &log, &shots).await)
        .expect("the dashboard story");
    check_overlaps(&log);
}

/// A machine dies with a plain server on it, seen in the dashboard: its host shows dark, and so
/// does the server's card. Stop server is refused (the host cannot confirm) and the page offers
/// to count it stopped on the operator's word, in a second dialog that quotes the refusal and
/// wants FORCE typed; declined or answered otherwise, nothing changes; with FORCE, the server is
/// stopped and the page keeps saying it was forced. Forget host asks for the host's
/// name typed out (a wrong name forgets nothing), is refused because the host last reported a
/// plain server running, and goes through forced once the operator confirms.
#[test]
fn a_dead_host_is_forced_out_from_the_dashboard() {
    let Some(tools) = browser_tools("a_dead_host_is_forced_out_from_the_dashboard") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let hdata = dir.path().join("h2");
    let log = dir.path().join("service.log");
    let _leftovers = KillLeftovers(dir.path().to_path_buf());
    let plane = plane_common::Plane::start(&data, &free_addr());
    let addr = plane.addr.clone();
    let host = Proc::spawn(
        Command::new(BIN)
            .args(["host", "--control", &addr, "--name", "h2"])
            .args(["--advertise", "127.0.0.1", "--data"])
            .arg(&hdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("understudy host");
    assert!(
        wait_until(Duration::from_secs(15), || host_is(&addr, "h2", |h| h
            ["connected"]
            == true)),
        "the host did not register"
    );
    let log_s = log.display().to_string();
    plane.ctl_ok(&[
        "add-server",
        "px",
        "--host",
        "h2",
        "--",
        BIN,
        "demo-service",
        "--log",
        &log_s,
    ]);
    plane.ctl_ok(&["start-server", "px"]);
    let server = get(&addr, "/api/servers/px")["process"]["pid"]
        .as_u64()
        .expect("the server's pid") as u32;

    let shots = shot_dir();
    let addr2 = addr.clone();
    in_browser(tools, async |c| {
        c.goto(&format!("http://{addr2}/"))
            .await
            .map_err(|e| e.to_string())?;
        assert!(
            wait_css(
                c,
                ".host[data-host=h2][data-state=connected]",
                Duration::from_secs(10)
            )
            .await,
            "h2 not shown connected"
        );
        assert!(
            c.find(Locator::Css("[data-act=forget-host]"))
                .await
                .is_err(),
            "a connected host offered to be forgotten"
        );

        // The machine dies: its host and the server it ran.
        common::signal(host.0.id(), nix::sys::signal::Signal::SIGKILL);
        common::signal(server, nix::sys::signal::Signal::SIGKILL);
        assert!(
            wait_css(
                c,
                ".host[data-host=h2][data-state=dark] [data-act=forget-host]",
                Duration::from_secs(20)
            )
            .await,
            "h2 not shown dark"
        );
        assert!(text(c, "[data-server=px] h2")
            .await
            .contains("host h2 dark"));
        shot(c, &shots, "10-host-dark").await;

        // Stop server: refused, and the force declined: nothing changes, and the page does not
        // go on to a forced call (it would say it waits for the host).
        click_confirm(c, "[data-server=px] [data-act=stop]").await;
        let asked = alert_text(c).await;
        assert!(
            asked.contains("cannot be told to stop")
                && asked.contains("on your word")
                && asked.contains("Type FORCE"),
            "{asked}"
        );
        c.dismiss_alert().await.map_err(|e| e.to_string())?;
        assert!(
            wait_until_async(|| async { text(c, "#msg.err").await.contains("refused") }).await,
            "no refusal shown"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let said = text(c, "#msg").await;
        assert!(
            said.contains("refused") && !said.contains("forced"),
            "{said}"
        );
        assert_eq!(get(&addr2, "/api/servers/px")["state"], "running");

        // Anything but FORCE typed (a second Enter types nothing): not forced either.
        click_confirm(c, "[data-server=px] [data-act=stop]").await;
        let _ = alert_text(c).await;
        c.accept_alert().await.map_err(|e| e.to_string())?;
        assert!(
            wait_until_async(|| async { text(c, "#msg.err").await.contains("not forced") }).await,
            "{}",
            text(c, "#msg").await
        );
        assert_eq!(get(&addr2, "/api/servers/px")["state"], "running");

        // FORCE: stopped on the operator's word, once the plane gave the host its time to
        // confirm (20 s), said meanwhile; the outcome stays on the page.
        click_confirm(c, "[data-server=px] [data-act=stop]").await;
        let _ = alert_text(c).await;
        c.send_alert_text("FORCE")
            .await
            .map_err(|e| e.to_string())?;
        c.accept_alert().await.map_err(|e| e.to_string())?;
        assert!(
            wait_until_async(|| async { text(c, "#msg.wait").await.contains("forced: waiting") })
                .await,
            "{}",
            text(c, "#msg").await
        );
        assert!(
            wait_css(
                c,
                "[data-server=px] .badge.stopped",
                Duration::from_secs(30)
            )
            .await,
            "not stopped: {}",
            text(c, "#msg").await
        );
        assert!(
            wait_until_async(|| async { text(c, "#msg.forced").await.contains("FORCED") }).await,
            "{}",
            text(c, "#msg").await
        );
        // And the card says so, for as long as its host does not report.
        assert!(
            wait_until_async(|| async {
                text(c, "[data-server=px] h2")
                    .await
                    .contains("stop unconfirmed (host h2)")
            })
            .await,
            "{}",
            text(c, "[data-server=px] h2").await
        );

        // Forget host: a wrong name forgets nothing.
        click(c, "[data-act=forget-host][data-host=h2]").await;
        let asked = alert_text(c).await;
        assert!(asked.contains("Type the host's name"), "{asked}");
        c.send_alert_text("h3").await.map_err(|e| e.to_string())?;
        c.accept_alert().await.map_err(|e| e.to_string())?;
        assert!(
            wait_until_async(|| async { text(c, "#msg.err").await.contains("not confirmed") })
                .await,
            "{}",
            text(c, "#msg").await
        );
        assert!(host_is(&addr2, "h2", |h| h
            .get("forgotten_unix_ms")
            .is_none()));

        // The name typed: refused (px last reported running), forced once confirmed.
        click(c, "[data-act=forget-host][data-host=h2]").await;
        let _ = alert_text(c).await;
        c.send_alert_text("h2").await.map_err(|e| e.to_string())?;
        c.accept_alert().await.map_err(|e| e.to_string())?;
        let asked = alert_text(c).await;
        assert!(
            asked.contains("server:px") && asked.contains("anyway"),
            "{asked}"
        );
        c.send_alert_text("FORCE")
            .await
            .map_err(|e| e.to_string())?;
        c.accept_alert().await.map_err(|e| e.to_string())?;
        assert!(
            wait_css(
                c,
                ".host[data-host=h2][data-state=forgotten]",
                Duration::from_secs(10)
            )
            .await,
            "h2 not shown forgotten: {}",
            text(c, "#msg").await
        );
        assert!(host_is(&addr2, "h2", |h| h["forgotten_unix_ms"].is_u64()));
        assert!(text(c, "[data-server=px] h2")
            .await
            .contains("host h2 forgotten"));
        shot(c, &shots, "11-host-forgotten").await;
        Ok(())
    })
    .expect("the dead host story");
}

/// The text of the dialog the page opened, waited for up to 5 s.
async fn alert_text(c: &Client) -> String {
    let t0 = Instant::now();
    loop {
        match c.get_alert_text().await {
            Ok(t) => return t,
            Err(e) if t0.elapsed() > Duration::from_secs(5) => panic!("no dialog: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Whether `ok` turns true within 5 s, polled.
async fn wait_until_async<F: std::future::Future<Output = bool>>(ok: impl Fn() -> F) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if ok().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Whether host `name` of `/api/hosts` satisfies `ok`.
fn host_is(addr: &str, name: &str, ok: impl Fn(&Value) -> bool) -> bool {
    get(addr, "/api/hosts")["hosts"]
        .as_array()
        .is_some_and(|hs| hs.iter().any(|h| h["name"] == name && ok(h)))
}

async fn story(
    c: &Client,
    addr: &str,
    data: &Path,
    log: &Path,
    shots: &Option<PathBuf>,
) -> Result<(), String> {
    c.goto(&format!("http://{addr}/"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(
        wait_css(c, "#live.ok", Duration::from_secs(10)).await,
        "the live stream did not connect"
    );
    shot(c, shots, "01-empty").await;

    // Add a server.
    click(c, "#add-server-btn").await;
    fill(c, "#form-server input[name=name]", "px").await;
    let cmd = format!("{BIN}\ndemo-service\n--log\n{}", log.display());
    fill(c, "#form-server textarea[name=command]", &cmd).await;
    shot(c, shots, "02-add-server").await;
    click(c, "#form-server button[value=ok]").await;
    assert!(
        wait_css(c, "[data-server=px]", Duration::from_secs(5)).await,
        "the server did not appear"
    );

    // Add hot failover with two standbys.
    click(c, "[data-server=px] [data-act=add-failover]").await;
    fill(
        c,
        "#form-failover input[name=standby_hosts]",
        "local, local",
    )
    .await;
    shot(c, shots, "03-add-failover").await;
    click(c, "#form-failover button[value=ok]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] [data-act=start-failover]",
            Duration::from_secs(5)
        )
        .await,
        "failover was not added: {}",
        text(c, "#msg").await
    );

    // Start the plain server; start failover is refused while it runs.
    click(c, "[data-server=px] [data-act=start]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] [data-act=stop]",
            Duration::from_secs(5)
        )
        .await
    );
    click(c, "[data-server=px] [data-act=start-failover]").await;
    assert!(wait_css(c, "#msg.err", Duration::from_secs(5)).await);
    let msg = text(c, "#msg").await;
    assert!(msg.contains("synchronized at boot-up"), "{msg}");
    shot(c, shots, "04-start-refused").await;

    // Stop the server, start failover: the preferred node is active, the standbys ready.
    click_confirm(c, "[data-server=px] [data-act=stop]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] [data-act=start]",
            Duration::from_secs(10)
        )
        .await
    );
    click(c, "[data-server=px] [data-act=start-failover]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] .node.active[data-node=px-1]",
            Duration::from_secs(20)
        )
        .await,
        "px-1 is not shown active: {}",
        text(c, "#msg").await
    );
    assert!(
        wait_css(
            c,
            "[data-node=px-2][data-role='standby, ready']",
            Duration::from_secs(20)
        )
        .await
            && wait_css(
                c,
                "[data-node=px-3][data-role='standby, ready']",
                Duration::from_secs(20)
            )
            .await,
        "standbys not shown ready"
    );
    shot(c, shots, "05-failover-running").await;

    // kill -9 the active's agent; the page shows the new active and, on the events page, the
    // failure event with its timeline.
    let watcher = Watcher::start(
        (1..=3)
            .map(|i| {
                let n = format!("px-{i}");
                let a = get(addr, "/api/servers/px")["failover"]["nodes"]
                    .as_array()
                    .and_then(|ns| ns.iter().find(|x| x["name"] == n.as_str()).cloned())
                    .and_then(|x| x["admin"].as_str().map(String::from))
                    .unwrap_or_default();
                (n, a)
            })
            .collect(),
    );
    let pid = agent_pid(data, "px-1").expect("agent of px-1");
    click(c, "[data-server=px] [data-act=events]").await;
    assert!(
        wait_css(c, "tr.event", Duration::from_secs(5)).await,
        "no events page"
    );
    let before = c
        .find_all(Locator::Css("tr.event"))
        .await
        .map(|v| v.len())
        .unwrap_or(0);
    let t0 = Instant::now();
    common::signal(pid, nix::sys::signal::Signal::SIGKILL);
    let mut appeared = false;
    while t0.elapsed() < Duration::from_secs(2) {
        let n = c
            .find_all(Locator::Css("tr.event"))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if n > before {
            appeared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        appeared,
        "the failure event did not appear in the page within 2 s of the kill"
    );
    let row = text(c, "tr.event").await;
    assert!(
        row.contains("epoch durable"),
        "the event shows no timeline: {row}"
    );
    shot(c, shots, "06-failure-event").await;

    // Back to the servers; switch over by hand (with confirmation).
    click(c, "#home-link").await;
    assert!(wait_css(c, "[data-server=px] .node.active", Duration::from_secs(5)).await);
    let active = attr(c, "[data-server=px] .node.active", "data-node")
        .await?
        .unwrap_or_default();
    assert_ne!(active, "px-1", "the killed node is still shown active");
    assert!(
        wait_css(
            c,
            "[data-node][data-role='standby, ready']",
            Duration::from_secs(20)
        )
        .await,
        "no ready standby to switch over to"
    );
    // Switch over to a chosen standby: the other ready standby of the two.
    assert!(
        wait_css(
            c,
            "[data-node='px-1'][data-role='standby, ready']",
            Duration::from_secs(20)
        )
        .await,
        "the restarted px-1 is not shown as a ready standby"
    );
    let chosen = if active == "px-2" { "px-3" } else { "px-2" };
    assert!(
        wait_css(
            c,
            &format!("[data-node='{chosen}'][data-role='standby, ready']"),
            Duration::from_secs(20)
        )
        .await,
        "{chosen} is not ready"
    );
    click_confirm(
        c,
        &format!("[data-server=px] [data-act=switchover-to][data-node='{chosen}']"),
    )
    .await;
    let sel = format!("[data-server=px] .node.active[data-node='{chosen}']");
    assert!(
        wait_css(c, &sel, Duration::from_secs(10)).await,
        "switchover to {chosen} not shown: {}",
        text(c, "#msg").await
    );
    shot(c, shots, "07-switched-over").await;
    let rep = watcher.finish();
    assert!(rep.sweeps > 10);

    // Stop failover: the active's service keeps running.
    let svc = get(addr, "/api/servers/px")["failover"]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["mode"] == "Hot").cloned())
        .and_then(|n| n["service"]["pid"].as_u64())
        .expect("active service pid") as u32;
    click_confirm(c, "[data-server=px] [data-act=stop-failover]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] .badge.running",
            Duration::from_secs(20)
        )
        .await
    );
    assert!(alive(svc), "stop failover killed the active's service");
    shot(c, shots, "08-failover-stopped").await;

    // Delete failover: the server stays as a plain server.
    click_confirm(c, "[data-server=px] [data-act=delete-failover]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] [data-act=add-failover]",
            Duration::from_secs(10)
        )
        .await,
        "failover not deleted: {}",
        text(c, "#msg").await
    );
    shot(c, shots, "09-failover-deleted").await;
    click_confirm(c, "[data-server=px] [data-act=stop]").await;
    assert!(
        wait_css(
            c,
            "[data-server=px] [data-act=start]",
            Duration::from_secs(20)
        )
        .await
    );
    Ok(())
}
