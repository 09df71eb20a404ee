//! `peer --web`: the safety checks and limits of the web listener with the real binary, the
//! JSON API and its event stream end to end, and the page itself in a real headless Chromium
//! driven through chromedriver's WebDriver HTTP API.

use crate::common::{pseudo_random, Indexd, KillOnDrop, ServingPeer, TempDir, IO_TIMEOUT};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A serving peer with `--web 127.0.0.1:0`: the peer, the page's address and its token.
fn web_peer(
    share: &std::path::Path,
    index: SocketAddr,
    extra: &[&str],
) -> (ServingPeer, SocketAddr, String) {
    let mut args = vec!["--web", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut peer = ServingPeer::start_with(share, index, &args);
    let line = peer.wait_line("its web page", IO_TIMEOUT, |l| {
        l.starts_with("peer: web page on ")
    });
    let url = line.rsplit(' ').next().unwrap_or_default();
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, token) = rest
        .split_once("/#token=")
        .expect("a token in the URL's fragment");
    (
        peer,
        addr.parse().expect("the page's address"),
        token.to_string(),
    )
}

/// One HTTP exchange on a fresh connection: the status, the head and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the page");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut BufReader::new(s))
}

/// Reads one response with a `Content-Length`.
fn read_response(r: &mut impl BufRead) -> (u16, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read a head line") == 0 {
            panic!("closed in the head: {head:?}");
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status = head[9..12].parse().expect("a status code");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("the body");
    (status, head, body)
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (
        status,
        serde_json::from_slice(&body).expect("a JSON answer"),
    )
}

#[test]
fn requests_without_the_token_from_a_foreign_host_or_not_json_are_refused() {
    let index = Indexd::start(&[]);
    let share = TempDir::new("web-safety");
    std::fs::write(share.path().join("morning-raga.flac"), b"raga bytes").unwrap();
    let (mut peer, web, token) = web_peer(share.path(), index.addr, &[]);
    peer.wait_registered(1);
    let bearer = format!("Authorization: Bearer {token}\r\n");

    // No token, a wrong one: 401.
    assert_eq!(get(web, "/api/status", "").0, 401);
    assert_eq!(
        get(web, "/api/status", "Authorization: Bearer 00ff\r\n").0,
        401
    );
    // The right token from a foreign Host (DNS rebinding): 403.
    let (status, _, _) = http(
        web,
        &format!(
            "GET /api/status HTTP/1.1\r\nHost: evil.example:{}\r\n{bearer}\r\n",
            web.port()
        ),
    );
    assert_eq!(status, 403);
    // Host names of a loopback listener pass.
    let (status, _, _) = http(
        web,
        &format!(
            "GET /api/status HTTP/1.1\r\nHost: localhost:{}\r\n{bearer}Connection: close\r\n\r\n",
            web.port()
        ),
    );
    assert_eq!(status, 200);
    // The page itself holds no secret and sets no cookie (browsers would send it to every
    // port of the host): its script reads the token from the link's fragment.
    let (status, head, page) = get(web, "/", "");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<script src=\"/app.js\""));
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    // A cookie carrying the token is no way in.
    let cookie = format!("Cookie: p2pshare_token_{}={token}\r\n", web.port());
    assert_eq!(get(web, "/api/status", &cookie).0, 401);
    let (status, _, body) = get(web, "/api/status", &bearer);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // `peer --json`'s status object.
    assert_eq!(v["type"], "status");
    assert_eq!(v["index"]["state"], "connected");
    assert_eq!(v["share"]["files"], 1);
    // A POST that a form or a simple request could send (not JSON): 415.
    let (status, _, _) = http(
        web,
        &format!(
            "POST /api/search HTTP/1.1\r\nHost: {web}\r\n{bearer}Content-Type: text/plain\r\n\
             Content-Length: 16\r\nConnection: close\r\n\r\n{{\"query\":\"raga\"}}"
        ),
    );
    assert_eq!(status, 415);
    // From another site's page: 403.
    let (status, _, _) = http(
        web,
        &format!(
            "POST /api/search HTTP/1.1\r\nHost: {web}\r\n{bearer}Content-Type: application/json\r\n\
             Origin: http://evil.example\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{{\"query\":\"raga\"}}"
        ),
    );
    assert_eq!(status, 403);
    // And the real thing works, with the console's filters.
    let (status, v) = post(web, "/api/search", &token, r#"{"query":"raga type:audio"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hits"][0]["name"], "morning-raga.flac");
    assert_eq!(v["hits"][0]["kind"], "audio");
    let (status, v) = post(web, "/api/search", &token, r#"{"query":"raga type:video"}"#);
    assert_eq!((status, v["hits"].as_array().map(Vec::len)), (200, Some(0)));
    let (status, v) = post(web, "/api/search", &token, r#"{"query":"raga size>>1"}"#);
    assert_eq!(status, 400, "{v}");
    // A file is named by hash, never by path.
    let (status, v) = post(web, "/api/get", &token, r#"{"hash":"../../etc/passwd"}"#);
    assert_eq!(status, 400, "{v}");
}

#[test]
fn a_huge_header_is_431_and_a_slowloris_is_closed_while_others_are_served() {
    let index = Indexd::start(&[]);
    let share = TempDir::new("web-limits");
    let (_peer, web, token) = web_peer(share.path(), index.addr, &["--web-idle-ms", "300"]);
    let bearer = format!("Authorization: Bearer {token}\r\n");

    // A head over 8 KiB: 431, then the connection closes.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {web}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A slowloris: a head that never ends, a byte at a time.
    let mut slow = TcpStream::connect(web).unwrap();
    slow.write_all(b"GET /api/status HTTP/1.1\r\nHost: ")
        .unwrap();
    // Meanwhile another client is answered, twice on one keep-alive connection.
    let c = TcpStream::connect(web).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    for _ in 0..2 {
        w.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {web}\r\n{bearer}\r\n").as_bytes())
            .unwrap();
        let (status, head, _) = read_response(&mut r);
        assert_eq!(status, 200);
        assert!(!head.contains("Connection: close"), "{head}");
    }
    // The slow one drips on, and is closed for not finishing its head.
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for b in b"127.0.0.1" {
        if slow.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = [0u8; 64];
    match slow.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "the slowloris got an answer: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    // And the peer serves on.
    assert_eq!(get(web, "/api/status", &bearer).0, 200);
}

#[test]
fn a_slow_body_and_a_flood_of_idle_connections_are_closed_and_the_page_serves_on() {
    let index = Indexd::start(&[]);
    let share = TempDir::new("web-flood");
    // Long enough that all the connections below are in before the first one times out,
    // even on a busy machine.
    let (_peer, web, token) = web_peer(share.path(), index.addr, &["--web-idle-ms", "2000"]);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    // Until it can read: EOF or a reset, without an answer.
    let closed_unanswered = |s: &mut TcpStream, what: &str| {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!(
                "{what} got an answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    };

    // A whole head announcing a body that never comes whole: closed by the idle timeout.
    let mut slow = TcpStream::connect(web).unwrap();
    slow.write_all(
        format!(
            "POST /api/search HTTP/1.1\r\nHost: {web}\r\n{bearer}Content-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"query\""
        )
        .as_bytes(),
    )
    .unwrap();
    closed_unanswered(&mut slow, "a body that never ends");

    // The page's connection cap (32) filled by idle connections: one more is closed at
    // accept; the idle ones are closed by the timeout; then the page serves again.
    let mut idle: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(web).unwrap();
            s.write_all(b"GET /api/status HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let mut extra = TcpStream::connect(web).unwrap();
    let _ = extra
        .write_all(format!("GET /api/status HTTP/1.1\r\nHost: {web}\r\n{bearer}\r\n").as_bytes());
    closed_unanswered(&mut extra, "the connection past the cap");
    for s in &mut idle {
        closed_unanswered(s, "an idle connection");
    }
    assert_eq!(get(web, "/api/status", &bearer).0, 200);
}

/// The events of a stream, read until `done` accepts one (name, JSON data).
fn read_events(
    r: &mut impl BufRead,
    mut done: impl FnMut(&str, &serde_json::Value) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut seen = Vec::new();
    let mut name = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("an event line") == 0 {
            panic!("the stream closed; events so far: {seen:?}");
        }
        let line = line.trim_end();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(data).expect("JSON data");
            let stop = done(&name, &v);
            seen.push((name.clone(), v));
            if stop {
                return seen;
            }
        }
    }
}

/// A holder sharing `files` (name, bytes), registered with `index`.
fn holder(index: SocketAddr, tag: &str, files: &[(&str, Vec<u8>)]) -> (ServingPeer, TempDir) {
    holder_with(index, tag, files, &[])
}

/// [`holder`] with more flags.
fn holder_with(
    index: SocketAddr,
    tag: &str,
    files: &[(&str, Vec<u8>)],
    extra: &[&str],
) -> (ServingPeer, TempDir) {
    let share = TempDir::new(tag);
    for (name, bytes) in files {
        std::fs::write(share.path().join(name), bytes).unwrap();
    }
    let mut peer = ServingPeer::start_with(share.path(), index, extra);
    peer.wait_registered(files.len());
    (peer, share)
}

#[test]
fn the_api_searches_downloads_and_streams_progress_to_the_end() {
    let index = Indexd::start(&[]);
    let bytes = pseudo_random(3 << 20, 17);
    let (_a, _a_share) = holder(
        index.addr,
        "web-api-holder",
        &[("harbour-lights.ogg", bytes.clone())],
    );
    let share = TempDir::new("web-api");
    let downloads = TempDir::new("web-api-downloads");
    let dl = downloads.path().to_str().unwrap().to_string();
    std::fs::write(share.path().join("own.txt"), b"of its own").unwrap();
    let (mut b, web, token) = web_peer(share.path(), index.addr, &["--downloads", &dl]);
    // Its index session is up (a search before it would be 503).
    b.wait_registered(1);

    let s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut events = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(
        format!("GET /api/events HTTP/1.1\r\nHost: {web}\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut head = String::new();
    while head != "\r\n" {
        head.clear();
        events.read_line(&mut head).unwrap();
        if head.starts_with("HTTP/1.1") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    }
    read_events(&mut events, |name, _| name == "status");

    let (status, v) = post(web, "/api/search", &token, r#"{"query":"harbour"}"#);
    assert_eq!(status, 200, "{v}");
    let hit = &v["hits"][0];
    assert_eq!(
        (hit["name"].as_str(), hit["size"].as_u64()),
        (Some("harbour-lights.ogg"), Some(3 << 20))
    );
    let hash = hit["hash"].as_str().unwrap().to_string();
    let (status, v) = post(
        web,
        "/api/lookup",
        &token,
        &format!(r#"{{"target":"{hash}"}}"#),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["files"][0]["holder_count"], 1);
    let (status, v) = post(web, "/api/get", &token, &format!(r#"{{"hash":"{hash}"}}"#));
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["queued"], format!("get -b {hash}"));

    // The download's end is the console's `saved` line, as `--json` writes it, with the
    // console's words.
    let seen = read_events(&mut events, |name, v| {
        name == "line"
            && v["hash"] == hash.as_str()
            && ["saved", "error"].contains(&v["type"].as_str().unwrap_or(""))
    });
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["type"], "saved", "{seen:?}");
    assert_eq!(last["size"], 3 << 20);
    assert!(
        last["text"].as_str().unwrap_or("").starts_with("saved "),
        "{seen:?}"
    );
    let saved = std::fs::read(downloads.path().join("harbour-lights.ogg")).expect("the download");
    assert_eq!(blake3::hash(&saved).to_hex().as_str(), hash);
}

// ----- a real browser -------------------------------------------------------------------------

/// A WebDriver session on a chromedriver child; the browser quits when dropped.
struct Browser {
    driver: SocketAddr,
    session: String,
    _child: KillOnDrop,
}

/// One WebDriver call: `method` on `path` with a JSON body; the answer's `value`.
fn webdriver(
    driver: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(driver).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // By its length: chromedriver keeps the connection open whatever the request says.
    let (_, _, json) = read_response(&mut BufReader::new(s));
    let v: serde_json::Value = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
    if v["value"].get("error").is_some() {
        panic!("WebDriver {method} {path}: {}", v["value"]);
    }
    v["value"].clone()
}

impl Browser {
    /// Headless Chromium through chromedriver, or why not.
    fn start() -> Result<Browser, String> {
        let which = |b: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(b))
                .find(|p| p.is_file())
        };
        let driver = which("chromedriver").ok_or("chromedriver is not installed")?;
        let chromium = which("chromium")
            .or_else(|| which("chromium-browser"))
            .or_else(|| which("google-chrome"))
            .ok_or("chromium is not installed")?;
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let child = KillOnDrop(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| "chromedriver did not say its port".to_string())?;
        let driver: SocketAddr = ([127, 0, 0, 1], port).into();
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let v = webdriver(driver, "POST", "/session", Some(caps));
        let session = v["sessionId"].as_str().ok_or("no session id")?.to_string();
        let b = Browser {
            driver,
            session,
            _child: child,
        };
        // Finding an element waits up to this long for it to appear: the waits below are
        // the browser's own, bounded.
        b.call(
            "POST",
            "timeouts",
            Some(serde_json::json!({"implicit": 30_000})),
        );
        Ok(b)
    }

    fn call(&self, method: &str, what: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let path = format!("/session/{}/{what}", self.session);
        webdriver(self.driver, method, &path, body)
    }

    /// The element `css` selects, waiting for it to appear.
    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .expect("an element id")
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("element/{id}/click"),
            Some(serde_json::json!({})),
        );
    }

    fn displayed(&self, css: &str) -> bool {
        let id = self.find(css);
        self.call("GET", &format!("element/{id}/displayed"), None)
            .as_bool()
            .unwrap_or(false)
    }

    /// The rendered text of the element `css` selects, waiting for it to appear. Read in
    /// the page in one step: the page re-renders its lists as events come, so an element
    /// found by one WebDriver call may be gone (stale) by the next.
    fn text(&self, css: &str) -> String {
        self.find(css);
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        self.call(
            "POST",
            "execute/sync",
            Some(serde_json::json!({"script": script, "args": [css]})),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = std::panic::catch_unwind(|| webdriver(self.driver, "DELETE", &path, None));
    }
}

/// Standard base64 (what WebDriver screenshots come in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn a_browser_searches_pages_downloads_two_at_once_and_sees_them_finish() {
    let browser = match Browser::start() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("skipped: {why} (CI installs Debian's chromium and chromium-driver)");
            return;
        }
    };
    // Two results a page, so that the page has a next page to ask for.
    let index = Indexd::start(&["--max-results", "2"]);
    let concert = pseudo_random(8 << 20, 41);
    let encore = pseudo_random(6 << 20, 43);
    // The holder sends 4 MB/s in all: the two downloads take seconds, side by side.
    let (_a, _a_share) = holder_with(
        index.addr,
        "web-browser-holder",
        &[
            ("Night Concert - Live at the Harbour.flac", concert.clone()),
            ("Night Concert - Encore.flac", encore.clone()),
            ("concert-poster.png", pseudo_random(200_000, 3)),
            ("concert programme.pdf", pseudo_random(90_000, 5)),
        ],
        &["--max-upload-rate", "4M"],
    );
    let share = TempDir::new("web-browser");
    std::fs::write(share.path().join("holiday-notes.txt"), b"sunscreen, hat").unwrap();
    let downloads = TempDir::new("web-browser-downloads");
    let dl = downloads.path().to_str().unwrap().to_string();
    let (mut b, web, token) = web_peer(share.path(), index.addr, &["--downloads", &dl]);
    b.wait_registered(1);

    browser.call(
        "POST",
        "url",
        Some(serde_json::json!({"url": format!("http://{web}/#token={token}")})),
    );
    browser.find("#conn.ok");
    // The token left the address bar, and no cookie holds it (another server on this host
    // would get that); a reload keeps the page working from the tab's sessionStorage.
    let seen = browser.call(
        "POST",
        "execute/sync",
        Some(serde_json::json!({
            "script": "return [location.href, document.cookie];",
            "args": [],
        })),
    );
    assert_eq!(seen[0], format!("http://{web}/"), "{seen}");
    assert_eq!(seen[1], "", "{seen}");
    browser.call("POST", "refresh", Some(serde_json::json!({})));
    browser.find("#conn.ok");
    let status = browser.text("#status");
    assert!(
        status.contains(&format!("connected to {}", index.addr)),
        "{status}"
    );
    assert!(status.contains("1 file, 14 B"), "{status}");
    let q = browser.find("#q");
    browser.call(
        "POST",
        &format!("element/{q}/value"),
        Some(serde_json::json!({"text": "concert"})),
    );
    browser.click("#go");
    // The first page: two of the four, and a button for the next.
    browser.find("#results tbody tr:nth-child(2)");
    assert_eq!(
        browser.text("#summary"),
        "2 of 4 matches: more shows the next page"
    );
    browser.click("#more");
    browser.find("#results tbody tr:nth-child(4)");
    assert_eq!(browser.text("#summary"), "4 results");
    assert!(!browser.displayed("#more"), "no page after the last");
    // Sorted by size, largest first: the recording leads; the type column says what it is.
    browser.click("#results th[data-key=size]");
    let first = browser.text("#results tbody tr:first-child td.name");
    assert_eq!(first, "Night Concert - Live at the Harbour.flac");
    assert_eq!(
        browser.text("#results tbody tr:first-child td:nth-child(2)"),
        "8.0 MiB"
    );
    assert_eq!(
        browser.text("#results tbody tr:first-child td.kind"),
        "audio"
    );
    // Both recordings at once.
    let hashes: Vec<String> = [&concert, &encore]
        .iter()
        .map(|b| blake3::hash(b).to_hex().to_string())
        .collect();
    for hash in &hashes {
        browser.click(&format!("#results button.get[data-hash=\"{hash}\"]"));
    }
    browser.find("#downloads[data-running=\"2\"]");
    for hash in &hashes {
        let row = browser.text(&format!("#dl-{hash}"));
        assert!(
            row.starts_with("Night Concert") && row.contains("running"),
            "{row}"
        );
        // (0 sources for an instant, while it connects.)
        assert!(row.contains(" source"), "{row}");
    }
    // Each row turns `saved` when its end comes.
    for (hash, size) in hashes.iter().zip(["8.0 MiB", "6.0 MiB"]) {
        browser.find(&format!("#downloads li.saved[id=\"dl-{hash}\"]"));
        let row = browser.text(&format!("#dl-{hash}"));
        assert!(row.contains(&format!("{size} of {size} (100%)")), "{row}");
    }
    for (name, bytes) in [
        ("Night Concert - Live at the Harbour.flac", &concert),
        ("Night Concert - Encore.flac", &encore),
    ] {
        let saved = std::fs::read(downloads.path().join(name))
            .expect("the download in the downloads directory");
        assert!(saved == *bytes, "{name} landed with other bytes");
    }
    // The status and the messages have caught up too: a screenshot for the README.
    browser.find("#log li.result");
    let png = base64_decode(
        browser
            .call("GET", "screenshot", None)
            .as_str()
            .expect("a screenshot"),
    );
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // README's picture is replaced only when asked (`P2PSHARE_SCREENSHOT=docs/web.png`), so
    // a test run leaves the tree as it was; otherwise the picture goes to the test's directory.
    let shots = TempDir::new("web-shot");
    let out = match std::env::var_os("P2PSHARE_SCREENSHOT") {
        Some(path) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
        None => shots.path().join("web.png"),
    };
    std::fs::write(&out, png).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));

    // A bad filter is said in words, on the page.
    browser.call(
        "POST",
        &format!("element/{q}/clear"),
        Some(serde_json::json!({})),
    );
    browser.call(
        "POST",
        &format!("element/{q}/value"),
        Some(serde_json::json!({"text": "concert size>>1"})),
    );
    browser.click("#go");
    browser.find("#error:not([hidden])");
    let error = browser.text("#error");
    assert!(error.starts_with("Search failed: "), "{error}");
    // At a phone's width, nothing is wider than the screen.
    browser.call(
        "POST",
        "window/rect",
        Some(serde_json::json!({"width": 400, "height": 900})),
    );
    let fits = browser.call(
        "POST",
        "execute/sync",
        Some(serde_json::json!({
            "script": "return [document.documentElement.scrollWidth, window.innerWidth];",
            "args": [],
        })),
    );
    let (page, screen) = (fits[0].as_u64().unwrap(), fits[1].as_u64().unwrap());
    assert!(
        screen <= 420 && page <= screen,
        "page {page} px wide on a {screen} px screen"
    );
}

#[test]
fn a_bare_lf_head_and_two_content_lengths_are_refused_at_once() {
    let index = Indexd::start(&[]);
    let share = TempDir::new("web-parse");
    let (_peer, web, token) = web_peer(share.path(), index.addr, &["--web-idle-ms", "60000"]);
    // Bare line ends: 400 and closed without waiting for a blank line that would never come
    // (the read would time out first, long before the 60 s idle timeout).
    let (status, head, _) = http(web, &format!("GET /api/status HTTP/1.1\nHost: {web}\n"));
    assert_eq!(status, 400, "{head}");
    // Two lengths (the smuggling shape): 400 and closed, the body not taken for a request.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "POST /api/register HTTP/1.1\r\nHost: {web}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (status, _, _) = read_response(&mut r);
    assert_eq!(status, 400);
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "closed after the 400");
}
