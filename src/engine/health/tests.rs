use super::*;

fn health(consecutive: u32) -> Health {
    Health::new(
        Breaker {
            enabled: true,
            consecutive_failures: consecutive,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(5),
            max_cool_down: Duration::from_secs(60),
        },
        Budget {
            enabled: true,
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_per_second: 1.0,
        },
        vec![("a".into(), vec!["m".into()]), ("b".into(), vec![])],
    )
}

#[test]
fn opens_after_consecutive_failures_and_probes_once() {
    let h = health(3);
    let t0 = Instant::now();
    assert_eq!(h.admit(0, "m", t0), Admit::Yes);
    assert_eq!(h.record(0, "m", Outcome::Failure, t0), None);
    assert_eq!(h.record(0, "m", Outcome::Failure, t0), None);
    assert_eq!(h.record(0, "m", Outcome::Failure, t0), Some(State::Open));
    let until = t0 + Duration::from_secs(5);
    assert_eq!(h.admit(0, "m", t0), Admit::Open { until });
    assert_eq!(h.admit(0, "other", t0), Admit::Yes, "per model");
    assert_eq!(h.admit(1, "m", t0), Admit::Yes, "per provider");
    // Cool-down over: one probe, and only one.
    let t1 = until;
    assert_eq!(h.admit(0, "m", t1), Admit::Probe);
    assert!(matches!(h.admit(0, "m", t1), Admit::Open { .. }));
    // The probe fails: open again for a full cool-down.
    assert_eq!(h.record(0, "m", Outcome::Failure, t1), Some(State::Open));
    assert!(matches!(
        h.admit(0, "m", t1 + Duration::from_secs(4)),
        Admit::Open { .. }
    ));
    let t2 = t1 + Duration::from_secs(5);
    assert_eq!(h.admit(0, "m", t2), Admit::Probe);
    let ok = Outcome::Success { ttft: None };
    assert_eq!(h.record(0, "m", ok, t2), Some(State::Closed));
    assert_eq!(h.admit(0, "m", t2), Admit::Yes);
}

#[test]
fn success_resets_the_consecutive_count_and_the_ratio_opens() {
    let h = health(3);
    let t = Instant::now();
    for _ in 0..3 {
        h.record(0, "m", Outcome::Failure, t);
        h.record(0, "m", Outcome::Failure, t);
        h.record(0, "m", Outcome::Success { ttft: None }, t);
    }
    assert_eq!(h.admit(0, "m", t), Admit::Yes, "never 3 in a row");
    // Alternating failures: the ratio (>= 0.5 over >= 10 requests) opens it at the 11th.
    let h2 = health(100);
    for i in 0..11u32 {
        let o = if i % 2 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success { ttft: None }
        };
        let s = h2.record(0, "m", o, t);
        assert_eq!(s.is_some(), i == 10, "request {i}");
    }
    assert!(matches!(h2.admit(0, "m", t), Admit::Open { .. }));
}

#[test]
fn retry_after_cools_for_that_long() {
    let h = health(5);
    let t = Instant::now();
    let ra = Duration::from_secs(2);
    h.record(
        0,
        "m",
        Outcome::RateLimited {
            retry_after: Some(ra),
        },
        t,
    );
    assert_eq!(h.admit(0, "m", t), Admit::Open { until: t + ra });
    assert_eq!(h.admit(0, "m", t + ra), Admit::Probe);
}

#[test]
fn neutral_probe_frees_the_slot() {
    let h = health(1);
    let t = Instant::now();
    h.record(0, "m", Outcome::Failure, t);
    let t1 = t + Duration::from_secs(5);
    assert_eq!(h.admit(0, "m", t1), Admit::Probe);
    h.record(0, "m", Outcome::Neutral, t1);
    assert_eq!(h.admit(0, "m", t1), Admit::Probe);
}

#[test]
fn budget_has_a_floor_and_a_ratio() {
    let h = health(5);
    let t = Instant::now();
    // Floor: 1/s over 10 s = 10 extra attempts, whatever the traffic.
    for i in 0..12 {
        assert_eq!(h.withdraw(t), i < 10, "withdrawal {i}");
    }
    // 100 requests: 20% = 20 extra attempts in the window.
    for _ in 0..100 {
        h.deposit(t);
    }
    let granted = (0..30).filter(|_| h.withdraw(t)).count();
    assert_eq!(granted, 10, "20 allowed, 10 already spent");
    // A window later it is all forgotten.
    assert!(h.withdraw(t + Duration::from_secs(11)));
}

#[test]
fn a_huge_retry_after_cools_for_the_cap_and_never_overflows() {
    let h = health(5);
    let t = Instant::now();
    for ra in [
        Duration::MAX,
        crate::durations::CEILING,
        Duration::from_secs(3600),
    ] {
        h.record(
            0,
            "m",
            Outcome::RateLimited {
                retry_after: Some(ra),
            },
            t,
        );
        assert_eq!(
            h.admit(0, "m", t),
            Admit::Open {
                until: t + Duration::from_secs(60)
            },
            "{ra:?}: cooled for max-cool-down (60 s) only"
        );
    }
    assert_eq!(h.admit(0, "m", t + Duration::from_secs(60)), Admit::Probe);
}

#[test]
fn pinned_ids_are_bounded_and_never_push_out_catalog_ids() {
    let h = health(1);
    let t = Instant::now();
    h.record(0, "m", Outcome::Failure, t); // "m" is provider a's catalog id
    for i in 0..(MAX_PINNED * 4) {
        let at = t + Duration::from_millis(i as u64);
        h.record(0, &format!("pinned-{i}"), Outcome::Failure, at);
    }
    let tracked = lock(&h.targets[0]);
    assert_eq!(tracked.pinned, MAX_PINNED);
    assert_eq!(tracked.entries.len(), MAX_PINNED + 1);
    assert!(tracked.entries.contains_key("m"), "the catalog id stays");
    assert!(
        tracked
            .entries
            .contains_key(&format!("pinned-{}", MAX_PINNED * 4 - 1)),
        "the newest pinned id is tracked"
    );
    assert!(!tracked.entries.contains_key("pinned-0"), "the oldest went");
    drop(tracked);
    assert!(matches!(h.admit(0, "m", t), Admit::Open { .. }));
    assert_eq!(
        h.record(0, &"x".repeat(300), Outcome::Failure, t),
        None,
        "an over-long id is never kept"
    );
}

#[test]
fn a_poisoned_lock_does_not_take_the_breaker_out_of_service() {
    let h = std::sync::Arc::new(health(1));
    let h2 = h.clone();
    let _ = std::thread::spawn(move || {
        let _g = h2.targets[0].lock();
        std::panic::panic_any("poison");
    })
    .join();
    assert!(h.targets[0].is_poisoned());
    let t = Instant::now();
    assert_eq!(h.record(0, "m", Outcome::Failure, t), Some(State::Open));
    assert!(matches!(h.admit(0, "m", t), Admit::Open { .. }));
    assert_eq!(h.snapshot(t).0.len(), 1, "still listed");
}

#[test]
fn ttft_average_and_p95() {
    let h = health(5);
    let t = Instant::now();
    for ms in 1..=40u64 {
        h.record(
            0,
            "m",
            Outcome::Success {
                ttft: Some(Duration::from_millis(ms)),
            },
            t,
        );
    }
    let p = h.ttft_p95(0, "m").expect("enough samples");
    assert_eq!(p, Duration::from_millis(38));
    assert!(h.ttft_ewma(0, "m").expect("measured") > 30.0);
    assert_eq!(h.ttft_p95(1, "m"), None);
}
