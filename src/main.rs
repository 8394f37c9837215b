//! `detour`: the gateway (Pingora flags `-c -d -t -u`), `detour mock` and `detour demo`.

use detour::admin::AdminApp;
use detour::config::{DEFAULT_CONFIG, DEMO_CONFIG};
use detour::gateway::Gateway;
use detour::metrics::Metrics;
use detour::mock::{Fault, MockConfig, MockServer};
use detour::proxy::{DetourProxy, Serving};
use detour::reload::Reloader;
use pingora_core::connectors::ConnectorOptions;
// Accepted connections get no L4 read buffer: Pingora's HTTP/1 reader already reads headers and
// bodies into buffers of its own, and the default 64 KiB buffer (zero-filled, so resident) per
// client connection was the largest share of RSS with many open streams (README, Performance).
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::Opt;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service;
use std::process::exit;

mod keys;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
detour — an OpenAI-compatible LLM gateway that walks a model fallback chain

USAGE:
  detour [-c FILE] [-d] [-u] [-t]   run the gateway (no -c: the built-in conf/detour.yaml)
      -c, --conf FILE   config file (YAML: Pingora's `server:` settings plus detour's)
      -t, --test        validate the config and exit (non-zero with the faulty YAML path)
      -d, --daemon      run in the background (pid file: server.pid_file)
      -u, --upgrade     take the listeners over from a running detour (send it SIGQUIT)
  detour keys COMMAND [-c FILE]     gateway keys in the configured store (detour keys help)
  detour demo                        mock providers on 127.0.0.1:9101/9102 + the gateway on :8080
  detour mock [OPTIONS]              a fault-injecting mock provider (OpenAI, Anthropic, Gemini, Bedrock APIs)
      --listen ADDR (127.0.0.1:9101)  --name NAME  --status CODE  --delay-ms MS
      --fault none|hang|reset|reset-mid-stream|stall-mid-stream|close-mid-body|error-in-stream
              |bad-event|no-done|end-early
      --fault-after N  --chunks N  --chunk-interval-ms MS  --first-token-delay-ms MS
      --retry-after SECS|MSms  --error-code CODE  --healthy-after N  --threads N
      Per request, headers x-mock-status, x-mock-delay-ms, x-mock-fault, x-mock-fault-after,
      x-mock-chunks, x-mock-chunk-interval-ms, x-mock-first-token-delay-ms, x-mock-retry-after
      and x-mock-error-code override these.
";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("mock") => mock_main(&args[2..]),
        Some("demo") => demo_main(),
        Some("keys") => keys::main(&args[2..]),
        Some("help") | Some("-h") | Some("--help") => {
            print!("{USAGE}");
        }
        _ => gateway_main(),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DETOUR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn gateway_main() {
    let opt = Opt::parse_args();
    let (text, source) = match &opt.conf {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, path.clone()),
            Err(e) => {
                eprintln!("detour: invalid config {path}: cannot read it: {e}");
                exit(1);
            }
        },
        None => (
            DEFAULT_CONFIG.to_string(),
            "built-in default (conf/detour.yaml)".to_string(),
        ),
    };
    let cfg = match Gateway::from_yaml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("detour: invalid config {source}: {e}");
            exit(1);
        }
    };
    if opt.test {
        let open = cfg.cfg.listen.iter().any(|a| !a.ip().is_loopback());
        if open && !cfg.cfg.auth.required {
            eprintln!(
                "detour: warning: {source} listens beyond loopback without auth.required: \
                 anyone who reaches it spends the operator's provider keys"
            );
        }
        println!("detour: config {source} is valid");
        exit(0);
    }
    init_logging();
    // Absolute: `-d` changes the working directory, and a reload reads the file again.
    let path = opt
        .conf
        .as_ref()
        .map(|p| std::path::absolute(p).map_or_else(|_| p.clone(), |a| a.display().to_string()));
    run_gateway(opt, cfg, path, &text)
}

/// Fail fast on an address that cannot be bound: Pingora would retry, then panic in its
/// listener thread and leave a process that serves nothing. Skipped with `-u`, where the
/// running process hands its sockets over.
fn check_listeners(opt: &Opt, gw: &Gateway) {
    if opt.upgrade {
        return;
    }
    let addrs = gw.cfg.listen.iter().chain(gw.cfg.admin_listen.iter());
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            eprintln!("detour: cannot listen on {addr}: {e}");
            exit(1);
        }
    }
}

fn run_gateway(mut opt: Opt, mut gw: Gateway, path: Option<String>, text: &str) -> ! {
    check_listeners(&opt, &gw);
    opt.conf = None; // the config is already loaded; Pingora gets its part below
    let server_conf = std::mem::take(&mut gw.cfg.server);
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    detour::reload::catch_sighup_early();
    let names: Vec<String> = gw.providers.iter().map(|p| p.name.clone()).collect();
    let metrics = match Metrics::new(&names) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("detour: cannot create metrics: {e}");
            exit(1);
        }
    };
    let listen = gw.cfg.listen.clone();
    let admin = gw.cfg.admin_listen;
    let options = ConnectorOptions::from_server_conf(&server.configuration);
    let gw = Arc::new(gw);
    let keys = keys::start(&gw, &metrics);
    let store = keys.as_ref().map(|k| k.store.clone());
    let records =
        detour::records::Recorder::start(gw.cfg.records.clone(), metrics.records_dropped.clone());
    let recorder = match records {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("detour: cannot start the request records: {e}");
            exit(1);
        }
    };
    let token_env = gw.cfg.auth.admin_token_env.clone();
    let serving = Serving::new(gw, metrics.clone(), options, keys.clone(), recorder.clone());
    let proxy = DetourProxy::new(serving);
    let current = proxy.current.clone();
    server.add_service(pingora_core::services::background::background_service(
        "reload",
        Reloader::new(path, text, current.clone(), metrics.clone()),
    ));
    let mut gateway =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, proxy, "detour");
    for addr in &listen {
        gateway.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
        );
    }
    server.add_service(gateway);
    if let Some(addr) = admin {
        let mut svc = Service::new(
            "detour-admin".to_string(),
            AdminApp {
                metrics,
                current,
                keys,
                recorder: recorder.clone(),
                token_env,
            },
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    server.run(RunArgs::default());
    // Every service has stopped: the records of the last answers, and what the store still has
    // queued (the embedded store's last debits), are written before the process exits.
    if !recorder.flush(std::time::Duration::from_secs(5)) {
        eprintln!("detour: the last request records were not all written (the records thread is gone, or 5 s passed)");
    }
    if let Some(store) = store {
        match detour::store::block_on(store.flush()) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => eprintln!("detour: the store's last writes failed: {e}"),
        }
    }
    exit(0)
}

fn mock_main(args: &[String]) {
    let mut cfg = MockConfig {
        record: false,
        ..MockConfig::default()
    };
    let mut listen = "127.0.0.1:9101".to_string();
    let mut threads = 1usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> String {
            match it.next() {
                Some(v) => v.clone(),
                None => {
                    eprintln!("detour mock: {flag} needs a value\n\n{USAGE}");
                    exit(2);
                }
            }
        };
        let bad = |what: &str| -> ! {
            eprintln!("detour mock: invalid value for {what}");
            exit(2);
        };
        match flag.as_str() {
            "--listen" => listen = value(),
            "--name" => cfg.name = value(),
            "--status" => cfg.status = value().parse().unwrap_or_else(|_| bad("--status")),
            "--delay-ms" => {
                cfg.delay =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| bad("--delay-ms")))
            }
            "--fault" => cfg.fault = value().parse::<Fault>().unwrap_or_else(|e| bad(&e)),
            "--fault-after" => {
                cfg.fault_after = value().parse().unwrap_or_else(|_| bad("--fault-after"))
            }
            "--chunks" => cfg.chunks = value().parse().unwrap_or_else(|_| bad("--chunks")),
            "--chunk-interval-ms" => {
                cfg.chunk_interval = Duration::from_millis(
                    value()
                        .parse()
                        .unwrap_or_else(|_| bad("--chunk-interval-ms")),
                )
            }
            "--first-token-delay-ms" => {
                cfg.first_token_delay = Duration::from_millis(
                    value()
                        .parse()
                        .unwrap_or_else(|_| bad("--first-token-delay-ms")),
                )
            }
            "--retry-after" => cfg.retry_after = Some(value()),
            "--error-code" => cfg.error_code = Some(value()),
            "--healthy-after" => {
                cfg.healthy_after = Some(value().parse().unwrap_or_else(|_| bad("--healthy-after")))
            }
            "--threads" => threads = value().parse().unwrap_or_else(|_| bad("--threads")),
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            other => {
                eprintln!("detour mock: unknown option {other}\n\n{USAGE}");
                exit(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("detour mock: cannot start runtime: {e}");
            exit(1);
        }
    };
    rt.block_on(async {
        let name = cfg.name.clone();
        match MockServer::start(&listen, cfg).await {
            Ok(m) => {
                println!("detour mock `{name}` listening on http://{}/v1", m.addr);
                std::future::pending::<()>().await;
            }
            Err(e) => {
                eprintln!("detour mock: cannot listen on {listen}: {e}");
                exit(1);
            }
        }
    });
}

fn demo_main() {
    let cfg = match Gateway::from_yaml(DEMO_CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("detour: invalid demo config: {e}");
            exit(1);
        }
    };
    // The two mock providers run on their own small runtime beside the gateway.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let flaky = MockConfig {
                name: "flaky".into(),
                status: 429,
                record: false,
                ..MockConfig::default()
            };
            let steady = MockConfig {
                name: "steady".into(),
                chunk_interval: Duration::from_millis(150),
                record: false,
                ..MockConfig::default()
            };
            let started = async {
                let a = MockServer::start("127.0.0.1:9101", flaky).await?;
                let b = MockServer::start("127.0.0.1:9102", steady).await?;
                Ok::<_, std::io::Error>((a, b))
            }
            .await;
            match started {
                Ok(servers) => {
                    let _ = ready_tx.send(Ok(()));
                    let _keep = servers;
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("mock providers: {e}")));
                }
            }
        });
    });
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("detour demo: {e}");
            exit(1);
        }
        Err(_) => {
            eprintln!("detour demo: the mock providers did not start");
            exit(1);
        }
    }
    println!(
        r#"
detour demo: gateway on http://127.0.0.1:8080, metrics on http://127.0.0.1:9090/metrics
  mock provider `flaky`  http://127.0.0.1:9101/v1  answers every request with 429
  mock provider `steady` http://127.0.0.1:9102/v1  answers (streams one chunk every 150 ms)
  model `gpt-4o` = flaky, then steady.  Stop with Ctrl-C.

Watch a fallback (x-detour-provider: steady, x-detour-attempts: 2):
  curl -i http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}]}}'

The same, streaming:
  curl -N http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'

The dashboard (records of every request, the breakers): start the demo with
DETOUR_ADMIN_TOKEN=demo set, then open http://127.0.0.1:9090/#token=demo

Every attempt failing gives one error listing them all:
  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"gpt-4o/flaky,gpt-4o-mini/flaky","messages":[]}}'
"#
    );
    init_logging();
    run_gateway(Opt::default(), cfg, None, DEMO_CONFIG)
}
