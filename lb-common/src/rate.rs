//! New-flow rate limits (`new_flows_per_second`, `new_flows_per_second_per_source`): the
//! generic cell rate algorithm, a token bucket kept as one number.
//!
//! The state is the *theoretical arrival time* (TAT, ns): when the bucket would be full
//! again if nothing more came. A flow is admitted when the bucket holds a token, i.e. when
//! `TAT - now` leaves room for one more emission interval within the burst
//! ([`RATE_BURST_NS`]: one second's worth of flows at once after a quiet second); admitting it
//! moves TAT one interval on. One `u64` per bucket, so a map value is 8 bytes, and both sides
//! (the XDP program and the host tests) run this same function.
//!
//! The program updates a bucket with a plain read and write: two CPUs admitting a flow of the
//! same bucket at the same instant may both take the last token (the limit may be exceeded by
//! one flow per CPU in such a race, never by more than that per race).

/// Burst tolerance of every bucket: a second's worth of flows may come at once.
pub const RATE_BURST_NS: u64 = 1_000_000_000;

/// The emission interval (ns between flows) of a rate in flows per second; `rate` > 0.
pub const fn interval_ns(rate: u32) -> u64 {
    let r = if rate == 0 { 1 } else { rate as u64 };
    let t = RATE_BURST_NS / r;
    if t == 0 { 1 } else { t }
}

/// May one more flow pass a bucket of `rate` flows/s whose state is `*tat` at `now` (ns)?
/// Updates `*tat` when it may.
#[inline(always)]
pub fn admit(tat: &mut u64, now: u64, rate: u32) -> bool {
    let t = interval_ns(rate);
    let start = if *tat > now { *tat } else { now };
    // Room for one more interval within the burst: start + t <= now + burst.
    if start - now + t > RATE_BURST_NS {
        return false;
    }
    *tat = start + t;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_admits_one_second_of_flows_then_refuses() {
        let mut tat = 0;
        let now = 5 * S;
        let admitted = (0..100).filter(|_| admit(&mut tat, now, 10)).count();
        assert_eq!(admitted, 10);
        // A tenth of a second later, one more token.
        assert!(admit(&mut tat, now + S / 10, 10));
        assert!(!admit(&mut tat, now + S / 10, 10));
    }

    #[test]
    fn a_quiet_bucket_refills_to_the_burst_and_no_further() {
        let mut tat = 0;
        for _ in 0..10 {
            assert!(admit(&mut tat, S, 10));
        }
        // An hour later it holds one second's worth again, not an hour's.
        let later = 3600 * S;
        let admitted = (0..1000).filter(|_| admit(&mut tat, later, 10)).count();
        assert_eq!(admitted, 10);
    }

    proptest! {
        /// Over any run of arrivals, what is admitted never exceeds the rate times the time
        /// elapsed plus the burst, and a steady stream at the rate is never refused.
        #[test]
        fn admitted_flows_stay_within_rate_times_time_plus_burst(
            rate in 1u32..100_000,
            gaps in proptest::collection::vec(0u64..(S / 10), 1..400),
        ) {
            let mut tat = 0;
            let start = 10 * S;
            let mut now = start;
            let mut admitted = 0u64;
            for g in gaps {
                now += g;
                if admit(&mut tat, now, rate) {
                    admitted += 1;
                }
            }
            let t = interval_ns(rate);
            let bound = (now - start) / t + RATE_BURST_NS / t + 1;
            prop_assert!(admitted <= bound, "{admitted} > {bound}");
        }

        #[test]
        fn flows_at_the_rate_always_pass(rate in 1u32..1_000_000, n in 1usize..500) {
            let mut tat = 0;
            let t = interval_ns(rate);
            let mut now = 10 * S;
            for _ in 0..n {
                prop_assert!(admit(&mut tat, now, rate));
                now += t;
            }
        }
    }
}
