//! Delivery to HTTP receivers: routing, grouping, repeats, the outbox, and one worker per
//! receiver that retries with backoff until a deadline.
//!
//! Detection only ever waits for the outbox write; a slow or dead receiver delays its own
//! worker and nothing else.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntCounterVec;
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use super::bucket::Bucket;
use super::config::{NotifyConfig, ReceiverConfig, ReceiverKind};
use super::outbox::{Delivery, Key, Outbox, OutboxError};
use super::render;
use super::request::{Attempt, send};
use crate::incident::{Alert, Status};
use crate::retry::{self, Backoff};
use crate::time::Millis;

/// Outcomes counted per receiver in `qos_sentinel_deliveries_total`.
pub const OUTCOMES: [&str; 7] = [
    "delivered",
    "retried",
    "failed",
    "expired",
    "dropped",
    "stale",
    "silenced",
];

pub use super::delivery_metrics::DeliveryMetrics;

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

struct Receiver {
    cfg: ReceiverConfig,
    wake: Notify,
}

/// The warning alert sent to receiver `i` before `a` escalated it, ended at `a`'s window.
fn escalated(st: &RouteState, a: &Alert, i: usize) -> Option<Alert> {
    let f = st.firing.get(&a.id)?;
    if a.status != Status::Firing || f.alert.severity >= a.severity || !f.sent.contains_key(&i) {
        return None;
    }
    let mut ended = f.alert.clone();
    ended.status = Status::Resolved;
    ended.resolved_at = Some(a.window_end);
    Some(ended)
}

/// A firing incident the dispatcher may have to repeat.
struct Firing {
    alert: Alert,
    /// Per receiver index: when it was last queued there, and how many repeats so far.
    sent: HashMap<usize, (Instant, u32)>,
}

#[derive(Default)]
struct RouteState {
    firing: HashMap<String, Firing>,
    /// (receiver, incident id) held back because a parent was firing there.
    held: HashSet<(usize, String)>,
    /// (receiver, incident id) whose firing was too old to send there (`max_age`): its
    /// resolution is not sent either, unless a fresh change was.
    stale: HashSet<(usize, String)>,
    /// (receiver, incident id) held back by a silence: sent when the silence ends if the
    /// incident still fires; its resolution while silenced is not sent.
    silenced: HashSet<(usize, String)>,
}

pub struct Dispatcher {
    receivers: Vec<Arc<Receiver>>,
    outbox: Arc<Outbox>,
    metrics: DeliveryMetrics,
    state: Mutex<RouteState>,
    max_outbox: usize,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    silences: std::sync::OnceLock<Arc<crate::silence::Silences>>,
}

impl Dispatcher {
    /// Opens the outbox under `state_dir` and starts one worker per receiver. Deliveries left
    /// for receivers no longer configured are dropped, with a warning.
    pub fn start(
        cfg: &NotifyConfig,
        state_dir: &Path,
        registry: &prometheus::Registry,
        retries: Option<&IntCounterVec>,
    ) -> Result<Arc<Self>, OutboxError> {
        let outbox = Arc::new(Outbox::open(state_dir)?);
        let metrics = DeliveryMetrics::register(registry, &cfg.receivers, retries);
        for name in outbox.receivers() {
            if !cfg.receivers.iter().any(|r| r.name == name) {
                let n = outbox.purge(&name)?;
                warn!(receiver = %name, dropped = n, "Receiver no longer configured: dropped its pending deliveries.");
            }
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("qos-sentinel/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let (stop, _) = watch::channel(false);
        let receivers: Vec<Arc<Receiver>> = cfg
            .receivers
            .iter()
            .map(|c| {
                Arc::new(Receiver {
                    cfg: c.clone(),
                    wake: Notify::new(),
                })
            })
            .collect();
        let d = Arc::new(Dispatcher {
            receivers: receivers.clone(),
            outbox: outbox.clone(),
            metrics: metrics.clone(),
            state: Mutex::new(RouteState::default()),
            max_outbox: cfg.max_outbox,
            stop,
            workers: Mutex::new(Vec::new()),
            silences: std::sync::OnceLock::new(),
        });
        let mut handles = Vec::new();
        for r in receivers {
            let pending = outbox.depth(&r.cfg.name);
            metrics
                .outbox_depth
                .with_label_values(&[r.cfg.name.as_str()])
                .set(pending as i64);
            if pending > 0 {
                info!(receiver = %r.cfg.name, pending, "Resuming deliveries left in the outbox.");
            }
            handles.push(tokio::spawn(worker(
                r,
                outbox.clone(),
                client.clone(),
                metrics.clone(),
                cfg.deadline,
                d.stop.subscribe(),
            )));
        }
        *d.workers.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        Ok(d)
    }

    /// Holds alerts back from every receiver while one of `silences` holds their scope.
    pub fn hold_with(&self, silences: Arc<crate::silence::Silences>) {
        let _ = self.silences.set(silences);
    }

    /// The silences alerts are held back by, if any.
    pub fn silences(&self) -> Option<&Arc<crate::silence::Silences>> {
        self.silences.get()
    }

    /// The ids of the silences holding `a`'s scope at `now`.
    pub fn holding(&self, a: &Alert, now: Millis) -> Vec<String> {
        self.silences
            .get()
            .map_or_else(Vec::new, |s| s.holding(&a.scope.to_string(), now))
    }

    /// Whether a silence holds `a`'s scope now.
    fn muted(&self, a: &Alert, now: Millis) -> bool {
        self.silences
            .get()
            .is_some_and(|s| !s.holding(&a.scope.to_string(), now).is_empty())
    }

    fn count(&self, receiver: usize, outcome: &str) {
        let name = self.receivers[receiver].cfg.name.as_str();
        self.metrics
            .deliveries
            .with_label_values(&[name, outcome])
            .inc();
    }

    pub fn has_receivers(&self) -> bool {
        !self.receivers.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes alerts that changed together to the receivers, grouped, and writes them to the
    /// outbox (synced) before returning. Only an outbox failure is an error.
    pub fn enqueue(&self, alerts: &[Alert]) -> Result<(), OutboxError> {
        self.enqueue_detected(alerts, now_ms())
    }

    /// [`Dispatcher::enqueue`] for alerts whose window close began at `detected_ms` (epoch ms).
    pub fn enqueue_detected(
        &self,
        alerts: &[Alert],
        detected_ms: Millis,
    ) -> Result<(), OutboxError> {
        if self.receivers.is_empty() || alerts.is_empty() {
            return Ok(());
        }
        let queued_ms = now_ms();
        let now = Instant::now();
        let mut per: Vec<Vec<Alert>> = vec![Vec::new(); self.receivers.len()];
        {
            let mut st = self.lock();
            for a in alerts {
                let muted = a.status == Status::Firing && self.muted(a, queued_ms);
                // Sent means not silenced (any more): receivers are not told otherwise.
                let sent = Alert {
                    silenced_by: Vec::new(),
                    ..a.clone()
                };
                for (i, r) in self.receivers.iter().enumerate() {
                    if !render::routes(&r.cfg, a) {
                        continue;
                    }
                    let key = (i, a.id.clone());
                    let parent_firing = a
                        .parent_id
                        .as_ref()
                        .is_some_and(|p| st.firing.get(p).is_some_and(|f| f.sent.contains_key(&i)));
                    let too_old = r.cfg.max_age().is_some_and(|age| {
                        queued_ms.saturating_sub(a.window_end) > age.as_millis() as Millis
                    });
                    if too_old || (a.status == Status::Resolved && st.stale.contains(&key)) {
                        // The past pages nobody (a backlog replayed): counted, not sent.
                        match a.status {
                            Status::Firing => st.stale.insert(key),
                            Status::Resolved => st.stale.remove(&key),
                        };
                        self.metrics
                            .deliveries
                            .with_label_values(&[r.cfg.name.as_str(), "stale"])
                            .inc();
                        continue;
                    }
                    st.stale.remove(&key);
                    match a.status {
                        Status::Firing if muted => {
                            st.silenced.insert(key);
                            self.count(i, "silenced");
                            continue;
                        }
                        // Never sent here while silenced: neither is its resolution.
                        Status::Resolved if st.silenced.remove(&key) => {
                            self.count(i, "silenced");
                            continue;
                        }
                        _ => {
                            st.silenced.remove(&key);
                        }
                    }
                    match a.status {
                        Status::Firing if r.cfg.hold_children && parent_firing => {
                            st.held.insert(key);
                            continue;
                        }
                        // Its firing was never sent here: neither is its resolution.
                        Status::Resolved if st.held.remove(&key) => continue,
                        _ => {}
                    }
                    if let Some(before) = escalated(&st, a, i)
                        && r.cfg.kind == ReceiverKind::Alertmanager
                    {
                        // Severity is one of Alertmanager's labels: the escalation is a new
                        // alert there, and the warning one ends now, not at its timeout.
                        per[i].push(before);
                    }
                    per[i].push(sent.clone());
                }
                match a.status {
                    Status::Firing => {
                        let f = st.firing.entry(a.id.clone()).or_insert_with(|| Firing {
                            alert: a.clone(),
                            sent: HashMap::new(),
                        });
                        f.alert = a.clone();
                        for (i, list) in per.iter().enumerate() {
                            if list.last().is_some_and(|l| l.id == a.id) {
                                f.sent.insert(i, (now, 0));
                            }
                        }
                    }
                    Status::Resolved => {
                        st.firing.remove(&a.id);
                    }
                }
            }
        }
        self.push(per, 0, queued_ms, Some(detected_ms))
    }

    /// Incidents firing in state this process restored or took over: their reminders and
    /// refreshes lived only in the memory of the process that fired them, and go on from here.
    /// Alertmanager receivers get a refresh at once (without one, Alertmanager resolves an
    /// alert by itself after its `resolve_timeout`); chat and webhook receivers are not paged
    /// again now, only reminded at their repeat interval. Incidents known here already are
    /// left alone. Returns how many were adopted.
    pub fn adopt(&self, alerts: &[Alert]) -> Result<usize, OutboxError> {
        if self.receivers.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let mut per: Vec<Vec<Alert>> = vec![Vec::new(); self.receivers.len()];
        let mut adopted: Vec<(Firing, Vec<usize>)> = Vec::new();
        let mut silenced = Vec::new();
        {
            let st = self.lock();
            // Parents first, so that a child held under its parent stays held.
            let mut list: Vec<&Alert> = alerts
                .iter()
                .filter(|a| a.status == Status::Firing && !st.firing.contains_key(&a.id))
                .collect();
            list.sort_by_key(|a| a.parent_id.is_some());
            let mut seen = HashSet::new();
            for a in list {
                if !seen.insert(a.id.as_str()) {
                    continue;
                }
                let mut f = Firing {
                    alert: a.clone(),
                    sent: HashMap::new(),
                };
                let mut held = Vec::new();
                let muted = self.muted(a, now_ms());
                for (i, r) in self.receivers.iter().enumerate() {
                    if !render::routes(&r.cfg, a) {
                        continue;
                    }
                    if muted {
                        silenced.push((i, a.id.clone()));
                        continue;
                    }
                    let parent_here = a.parent_id.as_ref().is_some_and(|p| {
                        st.firing.get(p).is_some_and(|f| f.sent.contains_key(&i))
                            || adopted
                                .iter()
                                .any(|(f, _)| &f.alert.id == p && f.sent.contains_key(&i))
                    });
                    if r.cfg.hold_children && parent_here {
                        held.push(i);
                        continue;
                    }
                    f.sent.insert(i, (now, 0));
                    if r.cfg.kind == ReceiverKind::Alertmanager {
                        per[i].push(a.clone());
                    }
                }
                adopted.push((f, held));
            }
        }
        self.push(per, 1, now_ms(), None)?;
        let n = adopted.len();
        let mut st = self.lock();
        st.silenced.extend(silenced);
        for (f, held) in adopted {
            for i in held {
                st.held.insert((i, f.alert.id.clone()));
            }
            st.firing.insert(f.alert.id.clone(), f);
        }
        Ok(n)
    }

    /// Incidents this process no longer speaks for (their partition moved to another
    /// instance): no more reminders or refreshes from here. Returns how many were reminded.
    pub fn release(&self, ids: &[String]) -> usize {
        let mut st = self.lock();
        let gone: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let before = st.firing.len();
        st.firing.retain(|id, _| !gone.contains(id.as_str()));
        st.held.retain(|(_, id)| !gone.contains(id.as_str()));
        st.stale.retain(|(_, id)| !gone.contains(id.as_str()));
        st.silenced.retain(|(_, id)| !gone.contains(id.as_str()));
        before - st.firing.len()
    }

    /// Queues reminders of incidents still firing whose receiver's repeat interval has passed.
    pub fn repeat_due(&self) -> Result<(), OutboxError> {
        if self.receivers.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut per: Vec<Vec<Alert>> = vec![Vec::new(); self.receivers.len()];
        let mut repeat = 0;
        self.unmuted(now)?;
        {
            let mut st = self.lock();
            for f in st.firing.values_mut() {
                for (i, (last, n)) in f.sent.iter_mut() {
                    let Some(every) = self.receivers[*i].cfg.repeat() else {
                        continue;
                    };
                    if now.duration_since(*last) >= every {
                        *last = now;
                        *n += 1;
                        repeat = repeat.max(*n);
                        per[*i].push(f.alert.clone());
                    }
                }
            }
        }
        self.push(per, repeat, now_ms(), None)
    }

    /// Sends the incidents held by a silence that has ended and that still fire, as news.
    fn unmuted(&self, now: Instant) -> Result<(), OutboxError> {
        let mut per: Vec<Vec<Alert>> = vec![Vec::new(); self.receivers.len()];
        {
            let mut st = self.lock();
            if st.silenced.is_empty() {
                return Ok(());
            }
            let at = now_ms();
            let ended: Vec<(usize, String)> = st
                .silenced
                .iter()
                .filter(|(_, id)| st.firing.get(id).is_none_or(|f| !self.muted(&f.alert, at)))
                .cloned()
                .collect();
            for key in ended {
                st.silenced.remove(&key);
                let (i, id) = key;
                let parent_here = st.firing.get(&id).and_then(|f| f.alert.parent_id.clone());
                let parent_here = parent_here
                    .is_some_and(|p| st.firing.get(&p).is_some_and(|f| f.sent.contains_key(&i)));
                if self.receivers[i].cfg.hold_children && parent_here {
                    st.held.insert((i, id));
                    continue;
                }
                if let Some(f) = st.firing.get_mut(&id) {
                    let mut a = f.alert.clone();
                    a.silenced_by.clear();
                    per[i].push(a);
                    f.sent.insert(i, (now, 0));
                }
            }
        }
        self.push(per, 0, now_ms(), None)
    }

    fn push(
        &self,
        per: Vec<Vec<Alert>>,
        repeat: u32,
        queued_ms: Millis,
        detected_ms: Option<Millis>,
    ) -> Result<(), OutboxError> {
        let mut items: Vec<(&str, Delivery)> = Vec::new();
        for (i, list) in per.into_iter().enumerate() {
            let r = &self.receivers[i].cfg;
            let size = if render::groups(r.kind) {
                r.group_max
            } else {
                1
            };
            for chunk in list.chunks(size) {
                items.push((
                    r.name.as_str(),
                    Delivery {
                        alerts: chunk.to_vec(),
                        repeat,
                        queued_ms,
                        detected_ms,
                    },
                ));
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let dropped = self.outbox.push(&items, self.max_outbox)?;
        for (name, n) in dropped {
            error!(receiver = %name, dropped = n, "Outbox full: dropped the oldest deliveries.");
            self.metrics
                .deliveries
                .with_label_values(&[name.as_str(), "dropped"])
                .inc_by(n as u64);
        }
        for r in &self.receivers {
            self.metrics
                .outbox_depth
                .with_label_values(&[r.cfg.name.as_str()])
                .set(self.outbox.depth(&r.cfg.name) as i64);
            r.wake.notify_one();
        }
        Ok(())
    }

    /// Size of the outbox database in bytes.
    pub fn outbox_bytes(&self) -> u64 {
        self.outbox.size_bytes()
    }

    /// Deliveries waiting over all receivers.
    pub fn pending(&self) -> usize {
        self.outbox.total()
    }

    /// Keeps delivering until the outbox is empty or `timeout` passed, then stops the workers.
    /// What is left stays in the outbox for the next start. Returns what was left.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let until = Instant::now() + timeout;
        while self.pending() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
        let left = self.pending();
        if left > 0 {
            warn!(
                left,
                "Shutdown: deliveries left in the outbox for the next start."
            );
        }
        left
    }
}

/// Delivers one receiver's outbox entries in order.
/// Retries of one delivery: from 500 ms doubling to 60 s, jittered (many instances may be
/// retrying one receiver).
const HTTP_RETRY: retry::Policy = retry::Policy {
    first: Duration::from_millis(500),
    max: Duration::from_secs(60),
    jitter: true,
};

/// One receiver's loop: the oldest delivery in its outbox, within its rate limit, until it is
/// delivered, refused or past the deadline.
async fn worker(
    r: Arc<Receiver>,
    outbox: Arc<Outbox>,
    client: reqwest::Client,
    metrics: DeliveryMetrics,
    deadline: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let name = r.cfg.name.as_str();
    let mut bucket = Bucket::new(r.cfg.rate_limit());
    let mut reading = Backoff::new(
        format!("read the outbox of receiver {name}"),
        Some(metrics.outbox_retries.clone()),
    );
    loop {
        if *stop.borrow() {
            return;
        }
        let head = match outbox.head(name) {
            Ok(h) => h,
            Err(e) => {
                let wait = reading.failed(e);
                if pause(&mut stop, wait).await {
                    return;
                }
                continue;
            }
        };
        let Some((key, d)) = head else {
            tokio::select! {
                _ = r.wake.notified() => {}
                _ = stop.changed() => return,
                // A push racing the check above still gets seen.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        if let Some(wait) = bucket.take() {
            if pause(&mut stop, wait).await {
                return;
            }
            continue;
        }
        if deliver(&r.cfg, &client, &metrics, deadline, &d, &mut stop).await {
            return;
        }
        done(&outbox, &metrics, name, &key);
    }
}

/// Sends one delivery until it is delivered, refused or past its deadline, counting the
/// outcome; true when told to stop first (the delivery stays in the outbox).
async fn deliver(
    cfg: &ReceiverConfig,
    client: &reqwest::Client,
    metrics: &DeliveryMetrics,
    deadline: Duration,
    d: &Delivery,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = cfg.name.as_str();
    let count = |outcome: &str| metrics.deliveries.with_label_values(&[name, outcome]).inc();
    let retried = metrics.deliveries.with_label_values(&[name, "retried"]);
    let mut b = Backoff::with_policy(
        format!("deliver to receiver {name}"),
        Some(retried),
        HTTP_RETRY,
    );
    loop {
        match send(client, cfg, d).await {
            Attempt::Done => {
                count("delivered");
                let age = (now_ms() - d.queued_ms).max(0) as f64 / 1000.0;
                metrics.latency.with_label_values(&[name]).observe(age);
                debug!(receiver = name, alerts = d.alerts.len(), "Delivered.");
                b.succeeded();
                return false;
            }
            Attempt::Fail(why) => {
                count("failed");
                warn!(receiver = name, alerts = d.alerts.len(), error = %why,
                    "Receiver rejected a delivery; not retrying.");
                return false;
            }
            Attempt::Retry { after, why } => {
                let wait = b.next_wait().max(after.unwrap_or_default());
                let expires = d.queued_ms + deadline.as_millis() as Millis;
                if now_ms() + wait.as_millis() as Millis > expires {
                    count("expired");
                    error!(receiver = name, alerts = d.alerts.len(), attempts = b.failures() + 1, error = %why,
                        "Giving up on a delivery: retry deadline passed.");
                    return false;
                }
                b.failed(&why);
                if pause(stop, wait).await {
                    return true;
                }
            }
        }
    }
}

fn done(outbox: &Outbox, metrics: &DeliveryMetrics, name: &str, key: &Key) {
    if let Err(e) = outbox.remove(key) {
        error!(receiver = name, error = %e, "Cannot remove a delivery from the outbox.");
    }
    metrics
        .outbox_depth
        .with_label_values(&[name])
        .set(outbox.depth(name) as i64);
}

/// Sleeps, unless told to stop first; true when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
