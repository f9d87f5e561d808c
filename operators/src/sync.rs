//! The one policy for poisoned locks: carry on with the data.
//!
//! A `Mutex` is poisoned when a thread panicked while holding it. Every thread of ours that can
//! panic is a timely worker (or the HTTP thread), and a worker's panic already ends the run with
//! its own message (`run` reports "worker panicked"). Panicking again in every other thread that
//! touches the same lock would bury that message under cascading ones and stop the others from
//! flushing what they hold. The data under our locks is counters, buffers and handles whose
//! every update is one call that either happens or does not (no lock is held across a plugin
//! call), so it is usable as it is. The state crate keeps the same policy in its own helper.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking over its data if a panicking thread poisoned it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let held = m.clone();
        let panicked = std::thread::spawn(move || {
            let mut v = held.lock().unwrap();
            v.push(2);
            panic!("a worker's bug");
        })
        .join();
        assert!(panicked.is_err() && m.is_poisoned());
        assert_eq!(*lock(&m), [1, 2], "what was done before the panic is there");
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }
}
