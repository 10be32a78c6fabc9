//! Weeks of a self-rotating intermediate under an enterprise CA that ages
//! below it, on a manual clock, in milliseconds: every step does what the
//! rotator and a request would at that hour, and the rules about time —
//! rotation at half life, the chain's end, the minimum life left, a minted
//! intermediate refused once its chain would end too soon — are checked at
//! each.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use super::{
    CaHandle, rotation_due,
    testkit::{Minting, TestCa, rules, spki},
};
use crate::{clock::ManualClock, issuer::Issuer, profile::Subject};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn an_enterprise_ca_ageing_below_a_rotating_intermediate() {
    let start = SystemTime::now();
    let (manual, clock) = ManualClock::starting_at(start);
    let root = TestCa::new("Root", start, 3650 * DAY, None, None);
    // The enterprise CA ends nine and a half days from now; castellan's
    // intermediates live two days and rotate daily, leaves up to a day.
    let parent_life = 9 * DAY + 12 * HOUR;
    let parent_end = start + parent_life;
    let parent = Arc::new(TestCa::new(
        "Enterprise CA",
        start,
        parent_life,
        Some(1),
        Some(&root),
    ));
    let minting = Minting {
        parent,
        root: root.der.clone(),
        life: 2 * DAY,
        clock: clock.clone(),
        minted: AtomicU64::new(0),
    };
    let min_ttl = 10 * 60;
    let handle = Arc::new(
        CaHandle::load(
            Arc::new(minting),
            rules(clock.clone(), DAY, Duration::from_secs(min_ttl)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let issuer = Issuer::new(
        Arc::clone(&handle),
        Duration::ZERO,
        Duration::from_secs(min_ttl),
    );
    let key = spki();
    let (mut rotated, mut refused, mut cut) = (0, 0, 0);
    // Three weeks, an hour at a time.
    for hour in 0..(21 * 24) {
        let now = start + hour * HOUR;
        manual.set(now);
        let current = handle.current();
        if rotation_due(current.facts()) <= now {
            match handle.replace().await {
                Ok(()) => rotated += 1,
                Err(e) => {
                    refused += 1;
                    assert!(
                        e.to_string().contains("expires sooner")
                            || e.to_string().contains("expired"),
                        "day {}: {e}",
                        hour / 24
                    );
                }
            }
        }
        let current = handle.current();
        assert!(
            current.not_after() <= parent_end,
            "the chain never outlives the CA above"
        );
        let issued = issuer
            .issue_tls(
                &key,
                Subject::Server {
                    dns_names: &["castellan.test".to_owned()],
                    ip_addresses: &[],
                },
                false,
                DAY,
            )
            .await;
        let left = parent_end.duration_since(now).unwrap_or_default();
        match issued {
            Ok(leaf) => {
                assert!(
                    leaf.not_after <= parent_end,
                    "hour {hour}: a leaf outlives its chain"
                );
                assert!(leaf.not_after <= current.facts().not_after);
                assert!(
                    left.as_secs() >= min_ttl,
                    "hour {hour}: issued with {left:?} left"
                );
                if leaf.not_after == current.not_after()
                    && current.not_after() < current.facts().not_after
                {
                    cut += 1;
                }
            }
            Err(e) => {
                assert!(
                    left.as_secs() < 3600,
                    "hour {hour}: refused with {left:?} left: {e}"
                );
            }
        }
    }
    // Rotated daily while the enterprise CA had more than a day to give;
    // refused from the day before it ended (a new intermediate's chain would
    // end sooner than the longest leaf); leaves cut to its end in its last day.
    assert!((8..=10).contains(&rotated), "rotated {rotated}");
    assert!(refused >= 11, "refused {refused}");
    assert!(cut >= 20, "cut {cut}");
}
