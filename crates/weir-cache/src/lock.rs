//! The fill lock (NGINX's `uwsgi_cache_lock`) and the update marker (its "updating"
//! state): at most one request per key goes to the app for a missing or expired entry;
//! the others wait for it (a miss, up to `lock_timeout`) or take the stale copy (an update).
//!
//! A [`Fill`] is held by the one request that fills; the others get a [`FillWait`] that
//! ends when the fill ends, however it ends (stored, not storable, failed, or its client
//! gone: the guard's drop ends it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The keys being filled.
#[derive(Default)]
pub struct FillLocks {
    filling: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
}

/// The right to fill a key; dropping it lets the waiters go.
pub struct Fill {
    key: String,
    filling: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

/// A wait for another request's fill.
pub struct FillWait(watch::Receiver<()>);

/// Who fills.
pub enum FillTurn {
    /// This request: it goes to the app and stores what it gets.
    Mine(Fill),
    /// Another request is at it.
    Theirs(FillWait),
}

impl FillLocks {
    /// The fill of `key`: this request's if nobody else's is under way.
    pub fn turn(&self, key: &str) -> FillTurn {
        let mut map = self.filling.lock().expect("fill lock map poisoned");
        if let Some(rx) = map.get(key) {
            return FillTurn::Theirs(FillWait(rx.clone()));
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_owned(), rx);
        FillTurn::Mine(Fill {
            key: key.to_owned(),
            filling: self.filling.clone(),
            _done: tx,
        })
    }

    /// Whether a fill of `key` is under way (an update: NGINX's "updating").
    pub fn is_filling(&self, key: &str) -> bool {
        self.filling
            .lock()
            .expect("fill lock map poisoned")
            .contains_key(key)
    }

    /// Fills under way.
    pub fn len(&self) -> usize {
        self.filling.lock().expect("fill lock map poisoned").len()
    }

    /// No fill under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Removed before the sender goes, so a waiter woken by it finds the key free.
        if let Ok(mut map) = self.filling.lock() {
            map.remove(&self.key);
        }
    }
}

impl FillWait {
    /// Waits until the fill ends or `timeout` passes; true when it ended.
    pub async fn done_within(mut self, timeout: Duration) -> bool {
        // `changed` fails when the sender (the Fill) is dropped: that is the end.
        let ended = async { while self.0.changed().await.is_ok() {} };
        tokio::time::timeout(timeout, ended).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_fills_the_others_wait_for_it() {
        let locks = FillLocks::default();
        let FillTurn::Mine(fill) = locks.turn("k") else {
            panic!("first must fill")
        };
        let FillTurn::Theirs(w1) = locks.turn("k") else {
            panic!("second must wait")
        };
        let FillTurn::Theirs(w2) = locks.turn("k") else {
            panic!("third must wait")
        };
        assert!(locks.is_filling("k"));
        assert!(matches!(locks.turn("other"), FillTurn::Mine(_)));
        let waiter = tokio::spawn(w1.done_within(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(fill);
        assert!(waiter.await.unwrap(), "the waiter saw the fill end");
        assert!(
            w2.done_within(Duration::from_secs(5)).await,
            "ended before it waited"
        );
        assert!(!locks.is_filling("k"));
        assert!(
            matches!(locks.turn("k"), FillTurn::Mine(_)),
            "the key is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_timeout() {
        let locks = FillLocks::default();
        let FillTurn::Mine(_fill) = locks.turn("k") else {
            panic!()
        };
        let FillTurn::Theirs(w) = locks.turn("k") else {
            panic!()
        };
        let start = tokio::time::Instant::now();
        assert!(!w.done_within(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
