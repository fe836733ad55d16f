//! The per-datagram fault decision: pure (no I/O, no clock), so it can be tested and replayed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::config::DirectionFaults;

/// How much longer than its jitter a reordered datagram is held back, so that datagrams sent just
/// after it (even with their own jitter) overtake it.
pub(crate) const REORDER_HOLD: Duration = Duration::from_millis(10);

/// What to do with one datagram.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Decision {
    /// Lost.
    Drop,
    /// Send after `delay`, and a second copy after `duplicate_delay` if set.
    Deliver {
        delay: Duration,
        duplicate_delay: Option<Duration>,
        reordered: bool,
    },
}

/// Decides the fate of one datagram.
///
/// Every roll is drawn for every datagram whatever the settings, so the RNG advances the same
/// way for each datagram and a seed replays the same decisions even if faults change mid-run.
pub(crate) fn decide(faults: &DirectionFaults, rng: &mut StdRng) -> Decision {
    let lost = rng.random::<f64>() < faults.loss;
    let reordered = rng.random::<f64>() < faults.reorder;
    let duplicated = rng.random::<f64>() < faults.duplicate;
    let jitter = faults.jitter.mul_f64(rng.random::<f64>());
    let duplicate_jitter = faults.jitter.mul_f64(rng.random::<f64>());
    if lost {
        return Decision::Drop;
    }
    let hold = if reordered {
        faults.jitter + REORDER_HOLD
    } else {
        Duration::ZERO
    };
    Decision::Deliver {
        delay: faults.delay + jitter + hold,
        duplicate_delay: duplicated.then_some(faults.delay + duplicate_jitter),
        reordered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn run(faults: &DirectionFaults, seed: u64, n: usize) -> Vec<Decision> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| decide(faults, &mut rng)).collect()
    }

    #[test]
    fn no_faults_delivers_everything_at_once() {
        for d in run(&DirectionFaults::default(), 1, 100) {
            assert_eq!(
                d,
                Decision::Deliver {
                    delay: Duration::ZERO,
                    duplicate_delay: None,
                    reordered: false
                }
            );
        }
    }

    #[test]
    fn same_seed_same_decisions_other_seed_differs() {
        let faults = DirectionFaults {
            loss: 0.3,
            jitter: Duration::from_millis(5),
            reorder: 0.2,
            duplicate: 0.2,
            ..DirectionFaults::default()
        };
        assert_eq!(run(&faults, 42, 200), run(&faults, 42, 200));
        assert_ne!(run(&faults, 42, 200), run(&faults, 43, 200));
    }

    #[test]
    fn delay_and_reorder_hold_are_added() {
        let faults = DirectionFaults {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(5),
            reorder: 1.0,
            duplicate: 1.0,
            ..DirectionFaults::default()
        };
        for d in run(&faults, 9, 50) {
            let Decision::Deliver {
                delay,
                duplicate_delay: Some(copy),
                reordered: true,
            } = d
            else {
                panic!("expected a reordered duplicate, got {d:?}");
            };
            // Held back past any jitter a later datagram can get.
            assert!(delay >= Duration::from_millis(65), "{delay:?}");
            assert!(copy >= Duration::from_millis(50) && copy < Duration::from_millis(55));
        }
    }

    #[test]
    fn certain_loss_drops_everything() {
        let faults = DirectionFaults {
            loss: 1.0,
            ..DirectionFaults::default()
        };
        assert!(run(&faults, 3, 100).iter().all(|d| *d == Decision::Drop));
    }
}
