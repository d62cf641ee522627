use super::*;

const LIMITS: QueueLimits = QueueLimits {
    max_bytes: 1 << 20,
    max_frames: 64,
};

fn set(groups: &[&str]) -> BTreeSet<String> {
    groups.iter().map(|s| s.to_string()).collect()
}

fn names(v: &[Arc<str>]) -> Vec<&str> {
    let mut v: Vec<&str> = v.iter().map(|g| &**g).collect();
    v.sort();
    v
}

/// Everything queued for `id`, as written to a socket.
fn drain(hub: &mut Hub, id: SubId) -> Vec<u8> {
    let q = hub.queue_mut(id);
    let mut out = Vec::new();
    let mut batch = Vec::new();
    loop {
        q.take_batch(&mut batch, 16);
        if batch.is_empty() {
            return out;
        }
        let total: usize = batch.iter().map(|s| s.len()).sum();
        for s in &batch {
            out.extend_from_slice(s);
        }
        q.settle(&mut batch, total);
    }
}

#[test]
fn replace_semantics_and_route_transitions() {
    let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
    let (a, b) = (hub.insert(), hub.insert());
    let mut delta = RouteDelta::default();
    let c = hub.set_groups(a, set(&["x", "y"]), &mut delta);
    assert_eq!((names(&c.joined), names(&c.left)), (vec!["x", "y"], vec![]));
    assert_eq!(names(&delta.held), vec!["x", "y"]);

    let mut delta = RouteDelta::default();
    hub.set_groups(b, set(&["y", "z"]), &mut delta);
    assert_eq!(names(&delta.held), vec!["z"], "y was already held here");

    let mut delta = RouteDelta::default();
    let c = hub.set_groups(a, set(&["y", "w"]), &mut delta);
    assert_eq!((names(&c.joined), names(&c.left)), (vec!["w"], vec!["x"]));
    assert_eq!(
        (names(&delta.held), names(&delta.freed)),
        (vec!["w"], vec!["x"])
    );
    assert_eq!(hub.groups_of(a).collect::<Vec<_>>(), vec!["w", "y"]);

    let mut delta = RouteDelta::default();
    hub.remove(a, &mut delta);
    assert_eq!(names(&delta.freed), vec!["w"], "b still holds y");
    let mut delta = RouteDelta::default();
    hub.set_groups(b, set(&[]), &mut delta);
    assert_eq!(names(&delta.freed), vec!["y", "z"]);
    assert_eq!(hub.group_count(), 0);
}

#[test]
fn every_subscriber_gets_every_event_once_in_order() {
    // A deterministic sweep over subscriber/group layouts.
    for subs in [1usize, 7, 50] {
        let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
        let ids: Vec<SubId> = (0..subs).map(|_| hub.insert()).collect();
        let mut delta = RouteDelta::default();
        for (i, &id) in ids.iter().enumerate() {
            // Subscriber i holds g0 and, when odd, g1.
            let groups = if i % 2 == 1 {
                set(&["g0", "g1"])
            } else {
                set(&["g0"])
            };
            hub.set_groups(id, groups, &mut delta);
        }
        let mut stats = DeliveryStats::default();
        let mut expected_odd = Vec::new();
        let mut expected_even = Vec::new();
        for n in 0..40u32 {
            let group = if n % 3 == 0 { "g1" } else { "g0" };
            let f = frame::text_frame(format!("{n}").as_bytes());
            hub.deliver(group, &f, &mut stats, &mut delta);
            expected_odd.extend_from_slice(&f);
            if group == "g0" {
                expected_even.extend_from_slice(&f);
            }
        }
        hub.deliver(
            "nobody",
            &frame::text_frame(b"lost"),
            &mut stats,
            &mut delta,
        );
        for (i, &id) in ids.iter().enumerate() {
            let want = if i % 2 == 1 {
                &expected_odd
            } else {
                &expected_even
            };
            assert_eq!(&drain(&mut hub, id), want, "subs={subs} i={i}");
        }
        let odd = (subs / 2) as u64;
        assert_eq!(stats.delivered, 26 * subs as u64 + 14 * odd);
        assert_eq!(stats.dropped, 0);
    }
}

#[test]
fn a_slow_subscriber_is_closed_and_others_unaffected() {
    let limits = QueueLimits {
        max_bytes: 1 << 20,
        max_frames: 4,
    };
    let mut hub = Hub::new(limits, SlowPolicy::Disconnect);
    let (slow, fast) = (hub.insert(), hub.insert());
    let mut delta = RouteDelta::default();
    hub.set_groups(slow, set(&["g"]), &mut delta);
    hub.set_groups(fast, set(&["g"]), &mut delta);
    let mut stats = DeliveryStats::default();
    let mut fast_got = Vec::new();
    let mut delta = RouteDelta::default();
    for n in 0..10 {
        let f = frame::text_frame(format!("{n}").as_bytes());
        hub.deliver("g", &f, &mut stats, &mut delta);
        fast_got.extend_from_slice(&f);
        // The fast one drains after every event.
        assert_eq!(drain(&mut hub, fast), &f[..]);
    }
    assert_eq!(stats.slow_disconnects, 1);
    // 4 queued then discarded, plus the 5th that did not fit; after the close
    // the slow one is out of the group, so the rest are not its drops.
    assert_eq!(stats.dropped, 5);
    assert_eq!(stats.delivered, 10 + 4);
    assert_eq!(
        drain(&mut hub, slow),
        &frame::close_frame(1013, "slow consumer")[..]
    );
    assert!(delta.freed.is_empty(), "fast still holds g");
}

#[test]
fn writer_wakeups() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
    let id = hub.insert();
    let mut delta = RouteDelta::default();
    hub.set_groups(id, set(&["g"]), &mut delta);
    assert!(hub.poll_pending(id, &mut cx).is_pending());
    let mut stats = DeliveryStats::default();
    let f = frame::text_frame(b"1");
    hub.deliver("g", &f, &mut stats, &mut delta);
    hub.deliver("g", &f, &mut stats, &mut delta);
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "one wake per empty->non-empty"
    );
    assert!(hub.poll_pending(id, &mut cx).is_ready());
    // A writer pacing its writes waits for a whole batch: not woken by
    // the frames before it, woken by the one that completes it, once.
    assert!(hub.poll_batch(id, 5, &mut cx).is_pending());
    hub.deliver("g", &f, &mut stats, &mut delta);
    hub.deliver("g", &f, &mut stats, &mut delta);
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "4 of 5 frames");
    hub.deliver("g", &f, &mut stats, &mut delta);
    assert_eq!(count.0.load(Ordering::SeqCst), 2, "the fifth");
    hub.deliver("g", &f, &mut stats, &mut delta);
    assert_eq!(count.0.load(Ordering::SeqCst), 2, "woken once");
    assert!(hub.poll_batch(id, 5, &mut cx).is_ready());
    // And by a close, whatever the count.
    assert!(hub.poll_batch(id, 50, &mut cx).is_pending());
    hub.close(id, 1000, "bye", &mut delta);
    assert_eq!(count.0.load(Ordering::SeqCst), 3, "the close");
    assert!(hub.poll_batch(id, 50, &mut cx).is_ready());
}

/// The status page's tail: under a disconnecting node it drops its own
/// oldest within its small bound instead of being closed, and what it
/// misses is not a client's loss; the latency stamp travels to the write.
#[test]
fn an_observer_drops_its_oldest_and_its_losses_are_its_own() {
    let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
    let (client, tail) = (hub.insert(), hub.insert_observer());
    let mut delta = RouteDelta::default();
    hub.set_groups(client, set(&["g"]), &mut delta);
    hub.set_groups(tail, set(&["g"]), &mut delta);
    let f = frame::text_frame(b"{}");
    let mut stats = DeliveryStats::default();
    for _ in 0..(OBSERVER_LIMITS.max_frames + 10) {
        hub.deliver_at("g", &f, 7, &mut stats, &mut delta);
    }
    // The client (64 frames) was closed as slow; the observer was not.
    assert_eq!(stats.slow_disconnects, 1);
    assert_eq!(stats.observer_dropped, 10);
    assert!(hub.queue_mut(tail).len() <= OBSERVER_LIMITS.max_frames);
    assert!(!hub.queue_mut(tail).is_closing());
    // Its unsent frames are not counted as a client's when it goes.
    assert_eq!(hub.remove(tail, &mut delta), 0);
    // The stamp comes back from the write that carried the event.
    let other = hub.insert();
    hub.set_groups(other, set(&["h"]), &mut delta);
    hub.deliver_at("h", &f, 42, &mut stats, &mut delta);
    let q = hub.queue_mut(other);
    let mut batch = Vec::new();
    q.take_batch(&mut batch, 16);
    let n = batch.iter().map(|b| b.len()).sum();
    assert_eq!(q.settle(&mut batch, n), Some(42));
    let depth = hub.queue_depth();
    assert_eq!(depth.frames, hub.queue_mut(client).len());
}
