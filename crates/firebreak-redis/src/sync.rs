//! The background task: connects, heartbeats the keys in use, publishes this process's
//! evidence, delivers the others', and falls back to the local gate when Redis fails.

use crate::{Inner, names};
use firebreak::gate::{FleetEvent, GateKey};
use futures_util::StreamExt;
use metrics::{Counter, Gauge};
use redis::aio::MultiplexedConnection;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// The fleet's metric handles.
#[derive(Debug)]
pub(crate) struct Metrics {
    up: Gauge,
    fallbacks: Counter,
    round_trips: Counter,
    pub(crate) dropped: Counter,
}

impl Metrics {
    pub(crate) fn register() -> Metrics {
        Metrics {
            up: metrics::gauge!(names::UP),
            fallbacks: metrics::counter!(names::FALLBACKS),
            round_trips: metrics::counter!(names::ROUND_TRIPS),
            dropped: metrics::counter!(names::EVENTS_DROPPED),
        }
    }
}

/// Sets a cooldown (or quota) key unless a longer one is set, then publishes the event.
const PUBLISH: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return redis.call('PUBLISH', KEYS[2], ARGV[2])
";

fn key_name(prefix: &str, what: &str, key: GateKey) -> String {
    format!("{prefix}:{what}:{:016x}", key.raw())
}

/// Runs until the fleet is dropped.
pub(crate) async fn run(
    inner: Weak<Inner>,
    client: redis::Client,
    mut events: mpsc::Receiver<(GateKey, FleetEvent)>,
) {
    let script = redis::Script::new(PUBLISH);
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    // Each turn is one connection's life, then a bounded wait: ends when the fleet is gone.
    loop {
        let Some(fleet) = inner.upgrade() else { return };
        let why = match connect(&fleet, &client).await {
            Ok((conn, pubsub)) => {
                fleet.connected.store(true, Ordering::Release);
                fleet.metrics.up.set(1.0);
                tracing::info!(
                    prefix = fleet.cfg.prefix,
                    "firebreak-redis: sharing the gate's account limits through Redis"
                );
                ever_connected = true;
                backoff = Duration::from_millis(100);
                drop(fleet);
                session(&inner, conn, pubsub, &mut events, &script).await
            }
            Err(e) => e,
        };
        let Some(fleet) = inner.upgrade() else { return };
        // Once per transition: a WARN and a count when sharing stops; an unreachable Redis at
        // start is one WARN too.
        if fleet.connected.swap(false, Ordering::AcqRel) || !ever_connected {
            fleet.metrics.up.set(0.0);
            if ever_connected {
                fleet.metrics.fallbacks.increment(1);
            }
            tracing::warn!(
                error = %why,
                "firebreak-redis: Redis is unreachable; each process uses its local gate alone until it is back"
            );
            ever_connected = true;
        }
        let wait = backoff;
        backoff = (backoff * 2).min(fleet.cfg.reconnect_max);
        drop(fleet);
        // Events seen while Redis is down cannot be shared: count them, keep nothing.
        if let Some(f) = inner.upgrade() {
            f.tick();
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                ev = events.recv() => match (ev, inner.upgrade()) {
                    (Some(_), Some(f)) => f.metrics.dropped.increment(1),
                    _ => return,
                },
            }
        }
    }
}

async fn connect(
    fleet: &Inner,
    client: &redis::Client,
) -> Result<(MultiplexedConnection, redis::aio::PubSub), String> {
    let t = fleet.cfg.command_timeout;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(t.max(Duration::from_secs(1)))
        .set_response_timeout(t);
    let conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(t.max(Duration::from_secs(1)), client.get_async_pubsub())
        .await
        .map_err(|_| "timed out opening the pub/sub connection".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(t, pubsub.subscribe(format!("{}:events", fleet.cfg.prefix)))
        .await
        .map_err(|_| "timed out subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((conn, pubsub))
}

/// One connection's life: returns why it ended.
async fn session(
    inner: &Weak<Inner>,
    mut conn: MultiplexedConnection,
    pubsub: redis::aio::PubSub,
    events: &mut mpsc::Receiver<(GateKey, FleetEvent)>,
    script: &redis::Script,
) -> String {
    let Some(heartbeat) = inner.upgrade().map(|f| f.cfg.heartbeat) else {
        return "the fleet was dropped".into();
    };
    let mut messages = pubsub.into_on_message();
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(fleet) = inner.upgrade() else {
            return "the fleet was dropped".into();
        };
        let step = tokio::select! {
            _ = tick.tick() => heartbeat_keys(&fleet, &mut conn).await,
            _ = fleet.new_key.notified() => heartbeat_keys(&fleet, &mut conn).await,
            ev = events.recv() => match ev {
                Some((key, event)) => publish(&fleet, &mut conn, script, key, event).await,
                None => return "the fleet was dropped".into(),
            },
            msg = messages.next() => match msg {
                Some(m) => {
                    receive(&fleet, &m);
                    Ok(())
                }
                None => Err("the pub/sub connection closed".to_owned()),
            },
        };
        if let Err(e) = step {
            return e;
        }
    }
}

/// Renews this process's membership of every key in use, reads how many share each, and
/// picks up cooldowns and quota holds it may have missed: one pipelined round trip.
async fn heartbeat_keys(
    fleet: &Arc<Inner>,
    conn: &mut MultiplexedConnection,
) -> Result<(), String> {
    let cfg = &fleet.cfg;
    let now = fleet.tick();
    let active_ms = u64::try_from(cfg.active_for.as_millis()).unwrap_or(u64::MAX);
    let keys: Vec<(u64, Arc<crate::KeyShare>)> = {
        let mut map = fleet.keys.write().unwrap_or_else(|e| e.into_inner());
        // `last_used` is stamped from the coarse clock, at most a heartbeat behind while
        // connected. (After a reconnect wait it may be further behind: a key dropped for that
        // is registered again by its next use.)
        let slack = cfg.heartbeat.as_millis() as u64;
        map.retain(|_, k| {
            now.saturating_sub(k.last_used.load(Ordering::Relaxed)) <= active_ms + slack
        });
        map.iter().map(|(k, v)| (*k, v.clone())).collect()
    };
    // Wall-clock milliseconds: members of one fleet may be different machines.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ttl = cfg.member_ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    let everyone = format!("{}:fleet", cfg.prefix);
    for members in std::iter::once(everyone).chain(
        keys.iter()
            .map(|(k, _)| key_name(&cfg.prefix, "members", GateKey::from_raw(*k))),
    ) {
        pipe.zadd(&members, &fleet.id, wall)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&members)
            .arg("-inf")
            .arg(wall.saturating_sub(ttl))
            .ignore()
            .zcard(&members)
            .pexpire(&members, (2 * ttl) as i64)
            .ignore();
    }
    for (k, _) in &keys {
        pipe.pttl(key_name(&cfg.prefix, "cooldown", GateKey::from_raw(*k)))
            .pttl(key_name(&cfg.prefix, "quota", GateKey::from_raw(*k)));
    }
    fleet.metrics.round_trips.increment(1);
    let out: Vec<i64> = tokio::time::timeout(cfg.command_timeout, pipe.query_async(conn))
        .await
        .map_err(|_| "a heartbeat timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.len() != 1 + 3 * keys.len() {
        return Err("a heartbeat's answer has the wrong shape".into());
    }
    let (counts, holds) = out.split_at(1 + keys.len());
    let fleet_n = counts[0].max(1) as f64;
    fleet
        .fleet_share
        .store((1.0 / fleet_n).to_bits(), Ordering::Relaxed);
    for (((k, share), members), hold) in keys.iter().zip(&counts[1..]).zip(holds.chunks(2)) {
        // A key's own count is complete once every process using it had a member_ttl to
        // register; before, assume the whole fleet uses it.
        let settled = now.saturating_sub(share.since) >= ttl;
        let n = if settled {
            (*members).max(1) as f64
        } else {
            (*members).max(1).max(counts[0]) as f64
        };
        share.share.store((1.0 / n).to_bits(), Ordering::Relaxed);
        let [cooldown, quota] = hold else {
            continue;
        };
        if *cooldown > 0 {
            fleet.deliver(
                GateKey::from_raw(*k),
                FleetEvent::Cooldown(Duration::from_millis(*cooldown as u64)),
            );
        }
        if *quota > 0 {
            fleet.deliver(
                GateKey::from_raw(*k),
                FleetEvent::QuotaExhausted(Duration::from_millis(*quota as u64)),
            );
        }
    }
    Ok(())
}

async fn publish(
    fleet: &Arc<Inner>,
    conn: &mut MultiplexedConnection,
    script: &redis::Script,
    key: GateKey,
    event: FleetEvent,
) -> Result<(), String> {
    let (what, kind, d) = match event {
        FleetEvent::Cooldown(d) => ("cooldown", 'c', d),
        FleetEvent::QuotaExhausted(d) => ("quota", 'q', d),
        FleetEvent::BreakerOpen(d) => ("breaker", 'b', d),
        _ => return Ok(()),
    };
    let ms = d.as_millis().max(1) as u64;
    let message = format!("{} {kind} {:016x} {ms}", fleet.id, key.raw());
    fleet.metrics.round_trips.increment(1);
    let r: Result<i64, _> = tokio::time::timeout(
        fleet.cfg.command_timeout,
        script
            .key(key_name(&fleet.cfg.prefix, what, key))
            .key(format!("{}:events", fleet.cfg.prefix))
            .arg(ms)
            .arg(message)
            .invoke_async(conn),
    )
    .await
    .map_err(|_| "publishing an event timed out".to_owned())?;
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Another process's event: `{id} {c|q|b} {key hex} {ms}`.
fn receive(fleet: &Arc<Inner>, msg: &redis::Msg) {
    let Ok(text) = msg.get_payload::<String>() else {
        return;
    };
    let mut parts = text.split(' ');
    let (Some(id), Some(kind), Some(key), Some(ms)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if id == fleet.id {
        return;
    }
    let (Ok(key), Ok(ms)) = (u64::from_str_radix(key, 16), ms.parse::<u64>()) else {
        return;
    };
    let d = Duration::from_millis(ms);
    let event = match kind {
        "c" => FleetEvent::Cooldown(d),
        "q" => FleetEvent::QuotaExhausted(d),
        "b" => FleetEvent::BreakerOpen(d),
        _ => return,
    };
    fleet.deliver(GateKey::from_raw(key), event);
}
