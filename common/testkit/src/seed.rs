//! Seeded randomness for tests: a test that makes random choices prints its
//! seed, and `SLUICE_TEST_SEED=<seed>` makes the same choices again.

/// The environment variable that fixes the seed.
pub const SEED_VAR: &str = "SLUICE_TEST_SEED";

/// A generator for `test`'s random choices, seeded from [`SEED_VAR`] if it
/// is set (a bad value panics naming the variable) and at random otherwise.
/// The seed is printed either way; the test harness shows it with the
/// output of a failed test.
pub fn rng(test: &str) -> fastrand::Rng {
    let seed = seed_from(std::env::var(SEED_VAR).ok().as_deref());
    println!("{test}: seed {seed} ({SEED_VAR}={seed} repeats its choices)");
    fastrand::Rng::with_seed(seed)
}

fn seed_from(value: Option<&str>) -> u64 {
    match value {
        Some(value) => value.trim().parse().unwrap_or_else(|_| panic!("{SEED_VAR}: `{value}` is not a seed (an unsigned 64-bit integer)")),
        None => fastrand::u64(..),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_seed_repeats_the_choices() {
        let seed = seed_from(Some(" 42 "));
        assert_eq!(seed, 42);
        let (mut a, mut b) = (fastrand::Rng::with_seed(seed), fastrand::Rng::with_seed(seed));
        assert_eq!((0..8).map(|_| a.u64(..)).collect::<Vec<_>>(), (0..8).map(|_| b.u64(..)).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "SLUICE_TEST_SEED: `x1` is not a seed")]
    fn a_bad_seed_names_the_variable() {
        seed_from(Some("x1"));
    }
}
