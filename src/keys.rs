//! `detour keys …`: gateway keys from the command line, against the configured store (so a
//! fresh install can make its first key), and opening the store when the gateway starts.

use detour::auth::manage::{micros_of, Manager, Refused};
use detour::auth::seal::Sealer;
use detour::auth::Keys;
use detour::config::DEFAULT_CONFIG;
use detour::gateway::Gateway;
use detour::metrics::Metrics;
use serde_json::{json, Map, Value};
use std::process::exit;
use std::sync::Arc;

const HELP: &str = "\
detour keys — gateway keys in the configured store (`store:`; default SQLite ./detour.db)

  detour keys create NAME [LIMITS] [--credits USD]   prints the key's secret, once
  detour keys list | show ID
  detour keys update ID [--name NAME] [LIMITS]
  detour keys disable ID | enable ID | revoke ID
  detour keys top-up ID USD [--note TEXT]
  detour keys byok ID PROVIDER            the key's own credentials, JSON on stdin:
                                          {\"api-key\": \"...\"}, {\"aws-access-key-id\": \"...\",
                                          \"aws-secret-access-key\": \"...\"} (bedrock) or
                                          {\"service-account\": {KEY FILE}} (vertex); --remove
                                          to drop
  detour keys usage ID [--days N] | ledger ID [--limit N]

LIMITS: --rpm N  --tpm N  --concurrency N  --credit-limit USD  --models a,b*  --providers a,b
        --no-ptb | --ptb  --ptb-deny provider/model,provider/*  --expires-at UNIX_SECONDS
Options: -c FILE (the gateway's config). BYOK needs the master key variable (DETOUR_MASTER_KEY).
";

/// The sealer from the variable `auth.master-key-env` names, if it is set.
fn sealer(gw: &Gateway) -> Option<Sealer> {
    let name = &gw.cfg.auth.master_key_env;
    let text = std::env::var(name).ok().filter(|t| !t.trim().is_empty())?;
    match Sealer::from_text(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("detour: {name}: {e}");
            exit(1);
        }
    }
}

/// At the gateway's start (`auth.required`): open the store, release reservations a crash
/// left open, and load the master key. Exits when the store cannot be opened.
pub fn start(gw: &Arc<Gateway>, metrics: &Arc<Metrics>) -> Option<Arc<Keys>> {
    if !gw.cfg.auth.required {
        return None;
    }
    let store = match detour::store::open_blocking(&gw.cfg.store, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("detour: cannot open the store: {e}");
            exit(1);
        }
    };
    let masker = Arc::new(gw.masker());
    let sealer = sealer(gw);
    Some(Arc::new(Keys::new(
        store,
        gw.clone(),
        masker,
        metrics.clone(),
        sealer,
    )))
}

/// Split `-c FILE` and `--flag VALUE` options from positional arguments.
fn options(args: &[String]) -> (Vec<String>, Map<String, Value>) {
    let mut pos = Vec::new();
    let mut opts = Map::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-ptb" | "--ptb" | "--remove" => {
                opts.insert(a.trim_start_matches('-').into(), json!(true));
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                let v = it.next().cloned().unwrap_or_default();
                opts.insert(a.trim_start_matches('-').into(), json!(v));
            }
            _ => pos.push(a.clone()),
        }
    }
    (pos, opts)
}

fn fail(m: impl std::fmt::Display) -> ! {
    eprintln!("detour keys: {m}");
    exit(2)
}

fn num(v: &Value, what: &str) -> Value {
    let s = v.as_str().unwrap_or_default();
    s.parse::<u64>()
        .map(|n| json!(n))
        .unwrap_or_else(|_| fail(format!("--{what}: expected a whole number, got `{s}`")))
}

fn usd(v: &Value, what: &str) -> f64 {
    let s = v.as_str().unwrap_or_default();
    s.parse::<f64>()
        .unwrap_or_else(|_| fail(format!("{what}: expected an amount in USD, got `{s}`")))
}

/// The policy fields the options set.
fn policy(opts: &Map<String, Value>) -> Map<String, Value> {
    let mut p = Map::new();
    let list = |v: &Value| {
        json!(v
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>())
    };
    for (k, v) in opts {
        let (name, value) = match k.as_str() {
            "rpm" | "tpm" | "concurrency" | "expires-at" => (k.as_str(), num(v, k)),
            "credit-limit" => {
                let m = micros_of(usd(v, "--credit-limit")).unwrap_or_else(|e| fail(e.message));
                ("credit-limit", json!(m))
            }
            "models" | "providers" | "ptb-deny" => (k.as_str(), list(v)),
            "no-ptb" => ("ptb", json!(false)),
            "ptb" => ("ptb", json!(true)),
            "c" | "conf" | "name" | "credits" | "note" | "days" | "limit" | "remove" => continue,
            other => fail(format!("unknown option --{other} (detour keys help)")),
        };
        p.insert(name.into(), value);
    }
    p
}

fn arg<'a>(pos: &'a [String], i: usize, what: &str) -> &'a str {
    pos.get(i)
        .map(String::as_str)
        .unwrap_or_else(|| fail(format!("missing {what} (detour keys help)")))
}

async fn run(m: &Manager<'_>, pos: &[String], opts: &Map<String, Value>) -> Result<Value, Refused> {
    let body = |v: Value| v.to_string().into_bytes();
    let id = || arg(pos, 1, "the key id");
    match pos.first().map(String::as_str).unwrap_or("help") {
        "create" => {
            let mut b = json!({"name": arg(pos, 1, "the key's name"), "policy": policy(opts)});
            if let Some(c) = opts.get("credits") {
                b["credits-usd"] = json!(usd(c, "--credits"));
            }
            m.create(&body(b)).await
        }
        "list" => m.list().await,
        "show" => m.show(id()).await,
        "update" => {
            let mut b = json!({"policy": policy(opts)});
            if let Some(n) = opts.get("name") {
                b["name"] = n.clone();
            }
            m.change(id(), &body(b)).await
        }
        "disable" => m.change(id(), &body(json!({"disabled": true}))).await,
        "enable" => m.change(id(), &body(json!({"disabled": false}))).await,
        "revoke" => m.revoke(id()).await,
        "top-up" => {
            let amount = usd(&json!(arg(pos, 2, "the amount in USD")), "the amount");
            let note = opts.get("note").cloned().unwrap_or(json!(""));
            m.top_up(id(), &body(json!({"usd": amount, "note": note})))
                .await
        }
        "byok" => {
            let provider = arg(pos, 2, "the provider");
            if opts.contains_key("remove") {
                return m.byok(id(), provider, None).await;
            }
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
                .unwrap_or_else(|e| fail(e));
            m.byok(id(), provider, Some(&input)).await
        }
        "usage" => {
            let days = opts
                .get("days")
                .map_or(30, |v| num(v, "days").as_u64().unwrap_or(30));
            m.usage(id(), u32::try_from(days).unwrap_or(366)).await
        }
        "ledger" => {
            let limit = opts
                .get("limit")
                .map_or(100, |v| num(v, "limit").as_u64().unwrap_or(100));
            m.ledger(id(), usize::try_from(limit).unwrap_or(10_000))
                .await
        }
        _ => {
            print!("{HELP}");
            exit(0)
        }
    }
}

pub fn main(args: &[String]) {
    let (pos, opts) = options(args);
    if pos.first().is_none_or(|c| c == "help") {
        print!("{HELP}");
        return;
    }
    let conf = opts
        .get("c")
        .or_else(|| opts.get("conf"))
        .and_then(Value::as_str);
    let gw = match conf {
        Some(path) => Gateway::load(path),
        None => Gateway::from_yaml(DEFAULT_CONFIG),
    }
    .unwrap_or_else(|e| fail(format!("invalid config: {e}")));
    let store = detour::store::open_blocking(&gw.cfg.store, false)
        .unwrap_or_else(|e| fail(format!("cannot open the store: {e}")));
    let sealer = sealer(&gw);
    let m = Manager {
        store: store.as_ref(),
        sealer: sealer.as_ref(),
        providers: gw
            .providers
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect(),
    };
    let out = detour::store::block_on(run(&m, &pos, &opts)).unwrap_or_else(|e| fail(e));
    match out {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(e) => fail(format!("{} ({})", e.message, e.status)),
    }
}
