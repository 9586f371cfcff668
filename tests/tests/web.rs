//! The HTTP server's security, with real clients: TLS and basic auth from
//! an exporter-toolkit web configuration file (`curl` over a certificate
//! `openssl` made), mTLS, which endpoints a client outside the node may
//! change (from a test namespace over a veth pair, against loopback and
//! the admin socket), the server's limits (header-read timeout,
//! connection cap, body limit, request timeout) and that an HTTP flood
//! (`wrk`) does not count against the telemetry cost budget.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sonde_tests::sys::{self, TempDir, must, run_with_timeout};
use sonde_tests::{Agent, Config, NetNs, VethPair, Workload, require_root};

/// One curl request: (HTTP status, body, curl's exit code). Status 0 when
/// no HTTP answer came (refused handshake, closed connection).
fn curl(cmd: Command) -> (u16, String, i32) {
    let mut cmd = cmd;
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// `curl -s ARGS URL`, printing the status on a last line of its own.
fn curl_cmd(netns: Option<&str>, args: &[&str]) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    c.args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args);
    c
}

/// `openssl ARGS` (split at spaces) in `dir`.
fn openssl(dir: &Path, args: &str) {
    must(
        Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace()),
    );
}

/// A self-signed server certificate for 127.0.0.1 (server.crt/.key); with
/// `clients`, a CA (ca.crt) and a client certificate it signed
/// (client.crt/.key).
fn certificates(dir: &Path, clients: bool) {
    const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1";
    openssl(
        dir,
        &format!(
            "req -x509 {EC} -keyout server.key -out server.crt -subj /CN=sonde-test \
             -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
        ),
    );
    if clients {
        openssl(
            dir,
            &format!("req -x509 {EC} -keyout ca.key -out ca.crt -subj /CN=sonde-test-ca"),
        );
        openssl(
            dir,
            &format!("req {EC} -keyout client.key -out client.csr -subj /CN=prometheus"),
        );
        // X.509 v3 with the client-auth usage: webpki refuses v1.
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("writing client.ext");
        openssl(
            dir,
            "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt \
             -days 1 -extfile client.ext",
        );
    }
}

/// Waits until the agent answers `/health/startup` 200 over TLS.
fn wait_started_tls(agent: &mut Agent, dir: &Path, extra: &[&str]) {
    let url = format!("https://127.0.0.1:{}/health/startup", agent.addr().port());
    let ca = dir.join("server.crt").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        let (status, _, _) = curl(curl_cmd(None, &args));
        if status == 200 {
            return;
        }
        assert!(
            agent.wait_exit(Duration::ZERO).is_none(),
            "the agent exited:\n{}",
            agent.log()
        );
        assert!(
            Instant::now() < deadline,
            "not started over TLS within 30 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_web_config(dir: &Path, text: &str) -> String {
    std::fs::write(dir.join("web.yml"), text).expect("writing web.yml");
    dir.join("web.yml").display().to_string()
}

#[test]
fn tls_and_basic_auth_protect_the_api_and_reload_on_sighup() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("web-tls");
    certificates(dir.path(), false);
    // Cost 10, as `htpasswd -B` makes them.
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let web = write_web_config(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS12\nbasic_auth_users:\n  prometheus: \"{hash}\"\n"
        ),
    );
    let config = Config::new().render();
    let mut agent = Agent::spawn(&config, &["--web.config.file", &web]);
    wait_started_tls(&mut agent, dir.path(), &[]);
    let base = format!("https://127.0.0.1:{}", agent.addr().port());
    let ca = dir.path().join("server.crt").display().to_string();
    let get = |user: Option<&str>, path: &str| {
        let url = format!("{base}{path}");
        let mut args = vec!["--cacert", ca.as_str()];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.push(&url);
        let t0 = Instant::now();
        let (status, body, _) = curl(curl_cmd(None, &args));
        (status, body, t0.elapsed())
    };

    // Right password: 200; the first check costs a bcrypt, the next ones
    // are remembered.
    let (status, body, first) = get(Some("prometheus:s3cret"), "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sonde_build_info"), "{body}");
    let mut again = Duration::MAX;
    for _ in 0..5 {
        let (status, _, t) = get(Some("prometheus:s3cret"), "/metrics");
        assert_eq!(status, 200);
        again = again.min(t);
    }
    eprintln!("GET /metrics over TLS: first (bcrypt) {first:?}, remembered {again:?}");
    for path in [
        "/api/v1/status",
        "/api/v1/events",
        "/api/v1/anomalies",
        "/api/v1/features",
    ] {
        assert_eq!(get(Some("prometheus:s3cret"), path).0, 200, "{path}");
        assert_eq!(get(None, path).0, 401, "{path} without credentials");
    }
    // Wrong or no password: 401, and the POST changed nothing.
    assert_eq!(get(Some("prometheus:wrong"), "/metrics").0, 401);
    assert_eq!(get(Some("nobody:s3cret"), "/metrics").0, 401);
    let (status, body, _) = get(None, "/metrics");
    assert_eq!(status, 401, "{body}");
    let url = format!("{base}/api/v1/anomalies/1/feedback");
    for user in [None, Some("prometheus:wrong")] {
        let mut args = vec![
            "--cacert",
            ca.as_str(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"verdict": "false_positive"}"#,
        ];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.push(&url);
        let (status, body, _) = curl(curl_cmd(None, &args));
        assert_eq!(status, 401, "{user:?}: {body}");
    }
    let (_, report, _) = get(Some("prometheus:s3cret"), "/api/v1/anomalies");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["feedback"], serde_json::json!([]), "{report}");
    // Health stays open for probes.
    assert_eq!(get(None, "/health/ready").0, 200);
    assert_eq!(get(None, "/health/live").0, 200);
    // Plain HTTP on the TLS port gets no answer.
    assert!(agent.try_request("GET", "/health/live").is_err());

    // SIGHUP: a new password takes effect; an invalid file keeps it.
    let hash2 = bcrypt::hash("n3w", 10).unwrap();
    write_web_config(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: \"{hash2}\"\n"
        ),
    );
    agent.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(Some("prometheus:n3w"), "/metrics").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "new password not in force:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(Some("prometheus:s3cret"), "/metrics").0, 401);
    write_web_config(dir.path(), "basic_auth_users:\n  prometheus: not-a-hash\n");
    agent.sighup();
    let log = agent.wait_log("keeping the current web configuration");
    assert!(log.contains("basic_auth_users.prometheus"), "{log}");
    assert_eq!(get(Some("prometheus:n3w"), "/metrics").0, 200);
}

#[test]
fn mtls_refuses_a_client_without_a_certificate() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("web-mtls");
    certificates(dir.path(), true);
    let web = write_web_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
         min_version: TLS13\n",
    );
    let config = Config::new().set("http", "web_config_file", &format!("{web:?}"));
    let mut agent = Agent::spawn(&config.render(), &[]);
    let abs = |f: &str| dir.path().join(f).display().to_string();
    let (cert, key) = (abs("client.crt"), abs("client.key"));
    wait_started_tls(&mut agent, dir.path(), &["--cert", &cert, "--key", &key]);
    let url = format!("https://127.0.0.1:{}/metrics", agent.addr().port());
    let ca = abs("server.crt");
    let (status, body, code) = curl(curl_cmd(None, &["--cacert", &ca, &url]));
    assert_eq!(status, 0, "answered without a client certificate: {body}");
    assert_ne!(code, 0, "curl should fail the handshake");
    let (status, body, _) = curl(curl_cmd(
        None,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, &url],
    ));
    assert_eq!(status, 200, "{body}");
    // A certificate the client CA did not sign is refused too.
    let (status, _, _) = curl(curl_cmd(
        None,
        &[
            "--cacert",
            &ca,
            "--cert",
            &abs("server.crt"),
            "--key",
            &abs("server.key"),
            &url,
        ],
    ));
    assert_eq!(status, 0);
    // TLS 1.2 is below the configured minimum.
    let (status, _, _) = curl(curl_cmd(
        None,
        &[
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--tls-max",
            "1.2",
            &url,
        ],
    ));
    assert_eq!(status, 0);
}

/// Feedback from outside the node (a namespace over a veth pair) is
/// refused and changes nothing; loopback and the admin socket are
/// accepted.
#[test]
fn state_changes_need_loopback_the_admin_socket_or_credentials() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("web-exposure");
    let socket = dir.path().join("admin.sock").display().to_string();
    // A stale socket file from a killed agent is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    let state = dir.path().join("state").display().to_string();
    let config = Config::new()
        .set("http", "admin_socket", &format!("{socket:?}"))
        .set("mapek", "warmup_cycles", "10")
        .set("mapek", "state_dir", &format!("{state:?}"))
        .set("debug", "fault_injection", "true");
    // Names and addresses of its own: other suites use the Lab's.
    let ns = NetNs::new("sonde-web");
    let _veth = VethPair::new("sondew0", "sondewp0", &ns, "10.213.7.1/30", "10.213.7.2/30");
    let mut agent = Agent::spawn_on_all_addresses(&config.render(), &[]);
    agent.wait_started(Duration::from_secs(30));
    let mode = std::fs::metadata(&socket)
        .expect("admin socket")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600, "admin socket mode");
    let port = agent.addr().port();

    // An anomaly to judge: a syscall storm after the warm-up (on a machine
    // shared with other tests, whichever anomaly opens first will do).
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.get_json("/api/v1/anomalies")["cycles"]
        .as_u64()
        .unwrap_or(0)
        < 12
    {
        assert!(Instant::now() < deadline, "MAPE-K never warmed up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let storm = Workload::spawn(&["getppid-rate", "5000000", "3"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (id, kind) = loop {
        let report = agent.get_json("/api/v1/anomalies");
        let found = ["active", "recent"].iter().find_map(|l| {
            let a = report[*l].as_array()?.first()?;
            Some((a["id"].as_u64()?, a["kind"].as_str()?.to_owned()))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no anomaly to judge: {report}");
        std::thread::sleep(Duration::from_millis(200));
    };
    storm.wait_success(Duration::from_secs(30));
    let scale = |agent: &Agent| {
        agent
            .metrics()
            .value_or_zero("sonde_mapek_threshold_scale", &[("kind", kind.as_str())])
    };
    assert_eq!(scale(&agent), 1.0);
    let feedback = format!("/api/v1/anomalies/{id}/feedback");
    let post = |ns_name: Option<&str>, url: &str, extra: &[&str]| {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"verdict": "false_positive"}"#,
        ];
        args.extend_from_slice(extra);
        args.push(url);
        curl(curl_cmd(ns_name, &args))
    };

    // From the namespace: reads are open (no web config), changes are not.
    let remote = format!("http://10.213.7.1:{port}");
    let (status, body, _) = curl(curl_cmd(Some(ns.name()), &[&format!("{remote}/metrics")]));
    assert_eq!(status, 200, "scraping from outside: {body}");
    let (status, body, _) = post(Some(ns.name()), &format!("{remote}{feedback}"), &[]);
    assert_eq!(status, 403, "{body}");
    for way in ["loopback", "admin socket", &socket] {
        assert!(body.contains(way), "the 403 should name {way:?}: {body}");
    }
    let (status, body, _) = post(
        Some(ns.name()),
        &format!("{remote}/debug/fail?component=x"),
        &[],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        scale(&agent),
        1.0,
        "a refused verdict changed the threshold"
    );
    assert_eq!(
        agent
            .metrics()
            .value_or_zero("sonde_http_requests_refused_total", &[("code", "403")]),
        2.0
    );
    assert!(!agent.get("/health/ready").1.contains("fault injection"));

    // Over the admin socket: accepted, and it widens the threshold.
    let (status, body, _) = post(
        None,
        &format!("http://sonde{feedback}"),
        &["--unix-socket", &socket],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(scale(&agent), 1.25);
    // From loopback: past the gate (the anomaly already has its verdict).
    let (status, body, _) = post(None, &format!("http://127.0.0.1:{port}{feedback}"), &[]);
    assert_eq!(status, 409, "{body}");
    let (status, body) = agent.post("/debug/recover?component=x");
    assert_eq!(status, 200, "{body}");
    drop(agent);
    assert!(!Path::new(&socket).exists(), "admin socket left behind");
}

/// Header-read timeout, connection cap with health still answered, body
/// limit and request timeout.
#[test]
fn limits_close_idle_connections_cap_connections_and_refuse_big_bodies() {
    if !require_root() {
        return;
    }
    const CAP: usize = 16;
    let config = Config::new()
        .set("http", "header_read_timeout_ms", "1500")
        .set("http", "request_timeout_ms", "2000")
        .set("http", "max_connections", &CAP.to_string());
    let agent = Agent::start(&config.render(), &[]);
    let addr = agent.addr();

    // CAP half-open connections: a request line and no end of headers.
    let t0 = Instant::now();
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // At the cap: the API is refused with 503, health still answers, fast.
    let r = agent.request("GET", "/metrics");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    let h0 = Instant::now();
    let r = agent.request("GET", "/health/ready");
    let health = h0.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        health < Duration::from_secs(1),
        "/health/ready took {health:?} at the cap"
    );
    eprintln!("at the cap ({CAP}): /health/ready answered in {health:?}");

    // The idle ones are closed after the header-read timeout (1.5 s).
    let mut closed_after = Vec::new();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || !String::from_utf8_lossy(&buf[..n]).contains("200 OK"),
            "a half-open request was answered"
        );
        closed_after.push(t0.elapsed());
    }
    let last = *closed_after.iter().max().unwrap();
    let first = *closed_after.iter().min().unwrap();
    eprintln!("half-open connections closed after {first:?} .. {last:?}");
    assert!(
        first >= Duration::from_millis(1400),
        "closed too early: {first:?}"
    );
    assert!(last < Duration::from_secs(5), "still open after {last:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(agent.get("/metrics").0, 200, "the cap did not free up");

    // A 10 MB body: 413 (announced, answered before it is read)...
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /api/v1/anomalies/1/feedback HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // ... and sent by curl.
    let dir = TempDir::new("web-limits");
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 10 * 1024 * 1024]).unwrap();
    let data = format!("@{}", big.display());
    let (status, body, _) = curl(curl_cmd(
        None,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &format!("http://{addr}/api/v1/anomalies/1/feedback"),
        ],
    ));
    assert_eq!(status, 413, "{body}");

    // A body that never finishes: 408 after the request timeout (2 s).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    s.write_all(
        b"POST /api/v1/anomalies/1/feedback HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"verdict\"",
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    let waited = t0.elapsed();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(6)).contains(&waited),
        "408 after {waited:?}"
    );

    // Beyond the cap and the overflow: closed at once.
    let held: Vec<TcpStream> = (0..CAP + 8)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "answered beyond cap and overflow");
    assert!(t0.elapsed() < Duration::from_secs(1), "not closed at once");
    drop(held);

    // What was refused, as /metrics counts it.
    std::thread::sleep(Duration::from_millis(1500));
    let s = agent.metrics();
    let refused =
        |code: &str| s.value_or_zero("sonde_http_requests_refused_total", &[("code", code)]);
    assert!(refused("503") >= 1.0, "{}", s.grep("sonde_http"));
    assert!(refused("413") >= 2.0, "{}", s.grep("sonde_http"));
    assert!(refused("408") >= 1.0, "{}", s.grep("sonde_http"));
    let over = |outcome: &str| {
        s.value_or_zero(
            "sonde_http_connections_over_cap_total",
            &[("outcome", outcome)],
        )
    };
    assert!(
        over("health_only") >= 8.0 && over("closed") >= 1.0,
        "{}",
        s.grep("sonde_http")
    );
    assert_eq!(
        s.value_or_zero("sonde_http_connections_open", &[]),
        1.0,
        "only the scrape's own connection: {}",
        s.grep("sonde_http")
    );
}

/// A bounded HTTP flood (wrk on /metrics for 5 s) costs CPU, but it is the
/// HTTP server's, reported apart and outside the budget: the governor
/// sheds nothing.
#[test]
fn an_http_flood_does_not_make_the_governor_shed() {
    if !require_root() {
        return;
    }
    sys::need_tool("wrk", "wrk");
    let config =
        Config::new()
            .set("mapek", "govern_cost", "true")
            .set("mapek", "cpu_budget", "0.2");
    let agent = Agent::start(&config.render(), &[]);
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("http://{}/metrics", agent.addr());
    let mut wrk = Command::new("wrk");
    wrk.args(["-t", "2", "-c", "16", "-d", "6s", "--timeout", "5s", &url]);
    let flood = std::thread::spawn(move || run_with_timeout(&mut wrk, Duration::from_secs(30)));
    let mut max_serving: f64 = 0.0;
    let mut max_level: f64 = 0.0;
    let mut max_user: f64 = 0.0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(s) = agent.try_metrics() {
            max_serving = max_serving
                .max(s.value_or_zero("sonde_overhead_cpu_ratio", &[("side", "http_server")]));
            max_user = max_user
                .max(s.value_or_zero("sonde_overhead_cpu_ratio", &[("side", "user_space")]));
            max_level = max_level.max(s.value_or_zero("sonde_overhead_shed_level", &[]));
        }
    }
    let out = flood.join().expect("wrk thread");
    let wrk_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {wrk_out}");
    let s = agent.metrics();
    max_level = max_level.max(s.value_or_zero("sonde_overhead_shed_level", &[]));
    let requests = wrk_out
        .lines()
        .find(|l| l.contains("Requests/sec"))
        .unwrap_or("?")
        .to_owned();
    eprintln!(
        "flood: {requests}; HTTP server CPU up to {:.0}% of a core, telemetry up to {:.1}%, \
         shed level up to {max_level}",
        max_serving * 100.0,
        max_user * 100.0
    );
    assert!(
        max_serving > 0.2,
        "the flood should cost the server more than the whole budget: {max_serving}\n{wrk_out}"
    );
    assert_eq!(
        max_level,
        0.0,
        "the governor shed during an HTTP flood:\n{}",
        s.grep("sonde_overhead")
    );
}

#[test]
fn an_invalid_web_config_stops_the_agent_with_exit_2_naming_the_key() {
    let dir = TempDir::new("web-invalid");
    for (text, key) in [
        (
            "basic_auth_users:\n  prom: plaintext\n",
            "basic_auth_users.prom",
        ),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /x.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n",
            "tls_server_config",
        ),
        ("tls_config: {}\n", "tls_config"),
    ] {
        let web = write_web_config(dir.path(), text);
        let mut run = sys::sonde_command();
        run.args(["run", "--listen", "127.0.0.1:0", "--web.config.file", &web]);
        let out = run_with_timeout(&mut run, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(key),
            "{text}: stderr should name {key}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        // `sonde config check` judges it too, through [http] web_config_file.
        let toml = dir.write(
            "sonde.toml",
            &format!("[http]\nweb_config_file = {web:?}\n"),
        );
        let mut check = sys::sonde_command();
        check.args(["config", "check", "--no-env"]).arg(&toml);
        let out = run_with_timeout(&mut check, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "config check {text}: {stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
    // Unreadable: exit 2 as well.
    let mut run = sys::sonde_command();
    run.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--web.config.file",
        "/nonexistent/web.yml",
    ]);
    let out = run_with_timeout(&mut run, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/web.yml"));
}
